"""Calibrate a device profile from latencies measured on the device itself.

Each anchor is a model and its latency on the device (typed in, or read from the output of
onnxruntime's ``onnxruntime_perf_test`` run there). The model is predicted for the device
from this host as usual; the ratio measured/predicted (geometric mean over the anchors)
becomes the profile's ``latency_factor``, and the anchors' leftover spread its error band.
The calibrated profile is a new file: the input profile is never changed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

from edgeprune.devices import Anchor, DeviceProfile, Quantity
from edgeprune.errors import ProfileError
from edgeprune.profiling import estimate

MIN_BAND = 0.10
"""A calibrated band never claims better than ±10%: new models differ from the anchors."""
PERF_TEST_AVERAGE = re.compile(r"Average inference time cost:\s*([0-9.]+)\s*ms")


def read_latency(value: str) -> float:
    """A latency in ms: a number, or a file holding ``onnxruntime_perf_test`` output."""
    try:
        latency = float(value)
    except ValueError:
        path = Path(value)
        if not _is_file(path):
            raise ProfileError(f"'{value}' is neither a latency in ms nor a file",
                               "pass MODEL.onnx=12.5 or MODEL.onnx=perf_test_output.txt") from None
        found = PERF_TEST_AVERAGE.search(path.read_text(encoding="utf-8", errors="replace"))
        if not found:
            raise ProfileError(f"no 'Average inference time cost' line in '{path}'",
                               "pass the output of onnxruntime_perf_test run on the device") from None
        latency = float(found.group(1))
    if not (math.isfinite(latency) and latency > 0):
        raise ProfileError(f"latency {latency} ms is not a positive finite number", "pass the measured latency in ms")
    return latency


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (ValueError, OSError):  # a NUL byte or an over-long name: not a path to any file
        return False


Predictor = Callable[[Path, DeviceProfile, int], float]
"""(model, device, threads) → predicted median ms."""


def predict_median(path: Path, device: DeviceProfile, threads: int) -> float:
    return estimate(path, device, threads=threads, runs=50, memory=False).prediction.latency_ms


def calibrate(device: DeviceProfile, measurements: dict[Path, float], *, threads: int | None = None,
              predict: Predictor = predict_median) -> DeviceProfile:
    """A copy of ``device`` whose predictions match ``measurements`` (ONNX file → measured median ms).

    The anchors replace any earlier ones, so the factor always matches the anchors listed.
    """
    if device.is_host:
        raise ProfileError("the host is measured, not predicted", "calibrate a device profile, not 'host'")
    if not measurements:
        raise ProfileError("no measurements given", "pass --measure MODEL.onnx=LATENCY_MS at least once")
    uncalibrated = device.model_copy(update={"calibration": device.calibration.model_copy(
        update={"latency_factor": None, "band": None, "anchors": []})})
    ratios, anchors = [], []
    threads = threads or device.runtime.threads
    for path, latency in measurements.items():
        ratios.append(latency / predict(Path(path), uncalibrated, threads))
        anchors.append(Anchor(model=Path(path).name, threads=threads,
                              latency=Quantity(value=latency, unit="ms", source="measured on the device",
                                               kind="measured")))
    factor = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    spread = max(abs(r / factor - 1) for r in ratios)
    source = f"edgeprune calibrate, {len(anchors)} anchor(s)"
    calibration = device.calibration.model_copy(update={
        "latency_factor": Quantity(value=round(factor, 4), unit="ratio", source=source, kind="measured"),
        "band": Quantity(value=round(max(MIN_BAND, 2 * spread), 4), unit="ratio", source=source, kind="measured"),
        "anchors": anchors})
    return device.model_copy(update={"calibration": calibration,
                                     "description": f"{device.description} Calibrated on the device."})

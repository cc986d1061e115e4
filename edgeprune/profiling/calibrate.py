"""Calibrate a device profile from latencies measured on the device itself.

Each anchor is a model and its latency on the device (typed in, or read from the output of
onnxruntime's ``onnxruntime_perf_test`` run there). The model is predicted for the device
from this host as usual; the ratio measured/predicted (geometric mean over the anchors)
becomes the profile's ``latency_factor``, and the anchors' leftover spread its error band.
An anchor that lands outside the band the uncalibrated profile stated is reported
(``AnchorCheck``): the profile's figures, or the anchor, are wrong by more than the tool
claimed, and a user should see that rather than have it absorbed silently into the factor.
The calibrated profile is a new file: the input profile is never changed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeprune.devices import Anchor, DeviceProfile, Quantity
from edgeprune.errors import ProfileError
from edgeprune.profiling import estimate
from edgeprune.profiling.predict import Prediction

ANCHOR_BAND = 1.0
"""The narrowest band a calibrated profile claims. Models other than the anchors land this far from the calibrated
prediction: ``benchmarks/device_validation.py`` calibrates on one published figure at a time and predicts the rest of
its series, and 90% of 384 such predictions fall within ±85-107% (five runs); the misses are the runtimes' own kernel
choices (ncnn runs ResNet-18 above a Raspberry Pi 4 core's fp32 peak for its MACs, by Winograd convolutions, and
ViT-B/32 at about a quarter of it), which anchors measured with onnxruntime on the device do not carry, but no
published onnxruntime figures show how much narrower the band then is. More anchors than one widen it further when
they disagree (twice their spread)."""
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


Predictor = Callable[[Path, DeviceProfile, int], Prediction]
"""(model, device, threads) → the predicted median with its band."""


def predict_median(path: Path, device: DeviceProfile, threads: int) -> Prediction:
    return estimate(path, device, threads=threads, runs=50, memory=False).prediction


@dataclass(frozen=True)
class AnchorCheck:
    """One anchor's measurement against what the uncalibrated profile predicted for it."""

    model: str
    measured_ms: float
    predicted: Prediction

    @property
    def inside(self) -> bool:
        return self.predicted.low_ms <= self.measured_ms <= self.predicted.high_ms

    def warning(self) -> str:
        p = self.predicted
        return (f"{self.model}: measured {self.measured_ms:.4g} ms is outside the predicted {p.latency_ms:.4g} ms "
                f"(band {p.low_ms:.4g}-{p.high_ms:.4g} ms, ±{p.band:.0%}), off by "
                f"{self.measured_ms / p.latency_ms:.2f}x; check that the profile's clock, cores and threads match "
                f"the device and that the measurement used the same model and runtime")


@dataclass(frozen=True)
class Calibrated:
    profile: DeviceProfile
    checks: list[AnchorCheck]

    @property
    def outside(self) -> list[AnchorCheck]:
        """The anchors the uncalibrated band did not cover."""
        return [check for check in self.checks if not check.inside]


def calibrate(device: DeviceProfile, measurements: dict[Path, float], *, threads: int | None = None,
              predict: Predictor = predict_median) -> Calibrated:
    """A copy of ``device`` whose predictions match ``measurements`` (ONNX file → measured median ms), and how each
    anchor compared with the band the uncalibrated profile stated.

    The anchors replace any earlier ones, so the factor always matches the anchors listed. The factor is stored
    unrounded: a profile calibrated on one anchor predicts that anchor exactly.
    """
    if device.is_host:
        raise ProfileError("the host is measured, not predicted", "calibrate a device profile, not 'host'")
    if not measurements:
        raise ProfileError("no measurements given", "pass --measure MODEL.onnx=LATENCY_MS at least once")
    uncalibrated = device.model_copy(update={"calibration": device.calibration.model_copy(
        update={"latency_factor": None, "band": None, "anchors": []})})
    ratios, anchors, checks = [], [], []
    threads = threads or device.runtime.threads
    for path, latency in measurements.items():
        predicted = predict(Path(path), uncalibrated, threads)
        checks.append(AnchorCheck(Path(path).name, latency, predicted))
        ratios.append(latency / predicted.latency_ms)
        anchors.append(Anchor(model=Path(path).name, threads=threads,
                              latency=Quantity(value=latency, unit="ms", source="measured on the device",
                                               kind="measured")))
    factor = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    spread = max(abs(r / factor - 1) for r in ratios)
    source = f"edgeprune calibrate, {len(anchors)} anchor(s)"
    calibration = device.calibration.model_copy(update={
        "latency_factor": Quantity(value=factor, unit="ratio", source=source, kind="measured"),
        "band": Quantity(value=round(max(ANCHOR_BAND, 2 * spread), 4), unit="ratio", source=source, kind="measured"),
        "anchors": anchors})
    profile = device.model_copy(update={"calibration": calibration,
                                        "description": f"{device.description} Calibrated on the device."})
    return Calibrated(profile, checks)

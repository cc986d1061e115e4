"""Latency and memory of an ONNX model on a device profile.

On the ``host`` profile everything is measured here (``profile``). Any other profile gets an
``Estimate`` (``estimate``): the model is measured here at one thread, per operator, and
moved to the device by ``predict``; every figure carries its error band.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.errors import ProfileError
from edgeprune.files import size_mb
from edgeprune.profile.devices import DeviceProfile, available_profiles, load_profile
from edgeprune.profile.measure import LatencyStats, compare_latency, measure_latency
from edgeprune.profile.memory import MemoryStats, measure_peak_memory
from edgeprune.profile.operators import profile_operators
from edgeprune.profile.predict import Prediction, predict_latency
from edgeprune.provenance import host_fingerprint, versions


@dataclass
class Measurement:
    """What one model did on this host: latency samples and percentiles, peak memory, size, setup."""

    model: str
    profile: str
    size_mb: float
    threads: int
    batch: int
    seq_len: int
    latency: LatencyStats
    memory: MemoryStats | None
    host: dict[str, Any] = field(default_factory=host_fingerprint)
    versions: dict[str, str] = field(default_factory=versions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "profile": self.profile, "size_mb": round(self.size_mb, 3),
            "threads": self.threads, "batch": self.batch, "seq_len": self.seq_len,
            "latency_ms": self.latency.to_dict(),
            "memory_mb": self.memory.to_dict() if self.memory else None,
            "host": self.host, "versions": self.versions,
        }


MEMORY_BAND_OTHER_DEVICE = 0.15
"""Peak memory is the same onnxruntime build allocating the same tensors; weight packing differs per ISA
(assumed band)."""


@dataclass
class Estimate:
    """A model's latency and memory on a device that is not this host, predicted from host measurements."""

    device: str
    threads: int
    prediction: Prediction
    """The predicted median latency with its band."""
    host: Measurement
    """This host at one thread: the basis of the prediction, the latency tail's shape, and peak memory."""

    def latency(self, percentile: str) -> tuple[float, float, float]:
        """(value, low, high) in ms at ``percentile``: the prediction times this host's percentile/median ratio."""
        tail = self.host.latency.percentile(percentile) / self.host.latency.p50
        p = self.prediction
        return p.latency_ms * tail, p.low_ms * tail, p.high_ms * tail

    def memory(self) -> tuple[float, float, float]:
        """(value, low, high) peak MiB over baseline."""
        if self.host.memory is None:
            raise ProfileError("this estimate was made without memory", "estimate with memory on")
        value = self.host.memory.peak_over_baseline_mb
        return value, value * (1 - MEMORY_BAND_OTHER_DEVICE), value * (1 + MEMORY_BAND_OTHER_DEVICE)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"device": self.device, "threads": self.threads, "predicted": True,
                                "latency_ms": self.prediction.to_dict(), "host_basis": self.host.to_dict()}
        if self.host.memory is not None:
            value, low, high = self.memory()
            data["memory_mb"] = {"peak_over_baseline_mb": round(value, 2), "low": round(low, 2),
                                 "high": round(high, 2), "band": MEMORY_BAND_OTHER_DEVICE}
        return data


def estimate(onnx_path: Path | str, device: DeviceProfile | str, *, threads: int | None = None, batch: int = 1,
             seq_len: int = 128, runs: int = 100, warmup: int = 20, memory: bool = True) -> Estimate:
    """Predict ``onnx_path`` on ``device`` from one-thread measurements on this host."""
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    host = profile(onnx_path, "host", threads=1, batch=batch, seq_len=seq_len, runs=runs, warmup=warmup,
                   memory=memory)
    ops = profile_operators(onnx_path, threads=1, batch=batch, seq_len=seq_len)
    threads = threads or device.runtime.threads
    prediction = predict_latency(ops, device, threads=threads, measured_ms=host.latency.p50)
    return Estimate(device=device.name, threads=threads, prediction=prediction, host=host)


def profile(onnx_path: Path | str, device: DeviceProfile | str = "host", *, threads: int | None = None,
            batch: int = 1, seq_len: int = 128, runs: int = 100, warmup: int = 20,
            memory: bool = True) -> Measurement:
    """Measure ``onnx_path`` on this host with the device profile's runtime settings."""
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    if not device.is_host:
        raise ProfileError(f"'{device.name}' is not this host, so it cannot be measured here",
                           "use edgeprune.profile.estimate for a prediction with an error band")
    onnx_path = Path(onnx_path)
    threads = threads or device.runtime.threads
    latency = measure_latency(onnx_path, threads, batch=batch, seq_len=seq_len, warmup=warmup, runs=runs)
    peak = measure_peak_memory(onnx_path, threads, batch, seq_len) if memory else None
    return Measurement(model=str(onnx_path), profile=device.name, size_mb=size_mb(onnx_path), threads=threads,
                       batch=batch, seq_len=seq_len, latency=latency, memory=peak)


__all__ = ["DeviceProfile", "Estimate", "LatencyStats", "Measurement", "MemoryStats", "Prediction",
           "available_profiles", "compare_latency", "estimate", "load_profile", "measure_latency", "profile"]

"""Latency and memory of an ONNX model on a device profile.

On the ``host`` profile everything is measured here (``profile``). Any other profile gets an
``Estimate`` (``estimate``): the model is measured here at one thread, per operator, and
moved to the device by ``predict`` (a decoder's decode steps by ``decode``, from memory
bandwidth); every figure carries its error band. Both answer the same questions
(``ProfileResult``: ``latency(percentile)``, ``memory()`` and a decoder's ``tokens_per_s()`` as
(value, low, high), ``device``, ``predicted``), so budgets, the search and the CLI never ask
which one they hold; ``measure_or_predict`` gives whichever the device allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgeprune import runtime
from edgeprune.devices import DeviceProfile, available_profiles, load_profile
from edgeprune.errors import ProfileError
from edgeprune.files import size_mb
from edgeprune.profiling.decode import decode_traffic, predict_decode
from edgeprune.profiling.generation import DEFAULT_NEW_TOKENS, GenerationStats, measure_generation
from edgeprune.profiling.health import HostHealth, check_health
from edgeprune.profiling.measure import LatencyStats, compare_latency, measure_latency, speedup_interval
from edgeprune.profiling.memory import MemoryStats, measure_peak_memory
from edgeprune.profiling.operators import OperatorProfile, profile_operators
from edgeprune.profiling.predict import Prediction, predict_latency
from edgeprune.provenance import host_fingerprint, versions

Figure = tuple[float, float, float]
"""(value, low, high): a figure and the band the true value is expected in."""


class ProfileResult(Protocol):
    """What a model does on a device, measured or predicted: the questions budgets and reports ask of either."""

    threads: int

    @property
    def device(self) -> str:
        """The device profile's name."""

    @property
    def predicted(self) -> bool:
        """True for a prediction (its band is real), False for a measurement on this host."""

    @property
    def basis(self) -> list[str]:
        """Why a predicted band is as wide as it is; empty for a measurement."""

    @property
    def size_mb(self) -> float: ...

    @property
    def timing_doubts(self) -> list[str]:
        """Why the latency figures cannot be trusted (an unstable measurement, a noisy host); empty when they can."""

    def latency(self, percentile: str) -> Figure:
        """(value, low, high) in ms at ``percentile`` (``p50``, ``p90``, ...)."""

    def memory(self) -> Figure:
        """(value, low, high) peak MiB over the process baseline; ``ProfileError`` when memory was not measured."""

    def tokens_per_s(self) -> Figure:
        """(value, low, high) decode tokens/s of a decoder LLM; ``ProfileError`` for any other model."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class Measurement:
    """What one model did on this host: latency samples and percentiles, peak memory, size, setup.

    A measurement has no band: ``latency`` and ``memory`` return (value, value, value), so a budget
    judged on the band is judged on the value itself — PASS or FAIL, unless ``timing_doubts`` says the
    latency cannot be trusted (then UNCERTAIN).
    """

    model: str
    profile: str
    size_mb: float
    threads: int
    batch: int
    seq_len: int
    latency_stats: LatencyStats
    memory_stats: MemoryStats | None
    host: dict[str, Any] = field(default_factory=host_fingerprint)
    versions: dict[str, str] = field(default_factory=versions)
    health: HostHealth | None = None
    """The host's state just before measuring."""
    generation: GenerationStats | None = None
    """A decoder's prefill and decode figures (``latency`` is then the prefill of ``seq_len`` tokens)."""

    @property
    def device(self) -> str:
        return self.profile

    @property
    def timing_doubts(self) -> list[str]:
        """The latency figures' own instability, and the host's state when it was not quiet."""
        host = [f"before timing, host {self.health.verdict}: {r}" for r in self.health.reasons] if self.health else []
        return [*self.latency_stats.doubts, *(self.generation.doubts if self.generation else []), *host]

    @property
    def predicted(self) -> bool:
        return False

    @property
    def basis(self) -> list[str]:
        return []

    def latency(self, percentile: str) -> Figure:
        """(value, value, value) in ms at ``percentile`` of the samples."""
        value = self.latency_stats.percentile(percentile)
        return value, value, value

    def tokens_per_s(self) -> Figure:
        """(value, value, value) decode tokens/s at the median step."""
        if self.generation is None:
            raise _not_a_decoder(self.model)
        value = self.generation.tokens_per_s
        return value, value, value

    def memory(self) -> Figure:
        """(value, value, value) peak MiB over the process baseline."""
        if self.memory_stats is None:
            raise ProfileError("this measurement was made without memory", "profile with memory on")
        value = self.memory_stats.peak_over_baseline_mb
        return value, value, value

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """The measurement as JSON; ``samples`` adds every timed sample by round (``rounds_ms``), which
        ``from_dict`` needs to answer any percentile where the figures are judged (the device agent's client)."""
        return {
            "model": self.model, "profile": self.profile, "size_mb": round(self.size_mb, 3),
            "threads": self.threads, "batch": self.batch, "seq_len": self.seq_len,
            "latency_ms": self.latency_stats.to_dict(samples),
            "memory_mb": self.memory_stats.to_dict() if self.memory_stats else None,
            "generation": self.generation.to_dict(samples) if self.generation else None,
            "host": self.host, "host_health": self.health.to_dict() if self.health else None,
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """The inverse of ``to_dict(samples=True)``: a measurement made on another machine (an edgeprune agent on
        the device), with that machine's host, versions and health, judged here like one made here."""
        return cls(model=str(data["model"]), profile=str(data["profile"]), size_mb=float(data["size_mb"]),
                   threads=int(data["threads"]), batch=int(data["batch"]), seq_len=int(data["seq_len"]),
                   latency_stats=LatencyStats.from_dict(data["latency_ms"]),
                   memory_stats=MemoryStats.from_dict(data["memory_mb"]) if data.get("memory_mb") else None,
                   host=dict(data["host"]), versions={str(k): str(v) for k, v in data["versions"].items()},
                   health=HostHealth.from_dict(data["host_health"]) if data.get("host_health") else None,
                   generation=GenerationStats.from_dict(data["generation"]) if data.get("generation") else None)


def _not_a_decoder(model: str) -> ProfileError:
    return ProfileError(f"'{model}' does not generate: it is not a decoder exported with its key/value cache",
                        "budget tokens/s only for decoder LLMs (edgeprune export of a …ForCausalLM)")


MEMORY_BAND_OTHER_DEVICE = 0.15
"""Peak memory is the same onnxruntime build allocating the same tensors; weight packing differs per ISA
(assumed band), beyond the allocator's share, which is measured (``Estimate.memory``)."""


@dataclass
class Estimate:
    """A model's latency and memory on a device that is not this host, predicted from host measurements."""

    device: str
    threads: int
    prediction: Prediction
    """The predicted median latency with its band."""
    host: Measurement
    """This host at one thread: the basis of the prediction, the latency tail's shape, and peak memory."""
    decode: Prediction | None = None
    """A decoder's predicted decode ms/token with its band (``latency`` stays its prefill); None for other models."""

    @property
    def predicted(self) -> bool:
        return True

    @property
    def basis(self) -> list[str]:
        return [*self.prediction.basis, *(self.decode.basis if self.decode else [])]

    @property
    def size_mb(self) -> float:
        """The model file is the same on every device."""
        return self.host.size_mb

    @property
    def timing_doubts(self) -> list[str]:
        """A prediction scaled from an untrustworthy host measurement is no better than it."""
        return self.host.timing_doubts

    def latency(self, percentile: str) -> Figure:
        """(value, low, high) in ms at ``percentile``: the prediction times this host's percentile/median ratio."""
        stats = self.host.latency_stats
        tail = stats.percentile(percentile) / stats.p50
        p = self.prediction
        return p.latency_ms * tail, p.low_ms * tail, p.high_ms * tail

    def tokens_per_s(self) -> Figure:
        """(value, low, high) decode tokens/s: 1000 / the predicted ms/token, so the band's ends swap (its low end
        is the slowest decode, ``high_ms``)."""
        if self.decode is None:
            raise _not_a_decoder(self.host.model)
        d = self.decode
        return 1e3 / d.latency_ms, 1e3 / d.high_ms, 1e3 / d.low_ms

    def memory(self) -> Figure:
        """(value, low, high) peak MiB over baseline: this host's peak with glibc's default allocator (as on a
        Raspberry Pi or a Jetson), down to its peak under one that returns freed blocks at once (as Android's
        does), each widened by ``MEMORY_BAND_OTHER_DEVICE``."""
        stats = self.host.memory_stats
        if stats is None:
            raise ProfileError("this estimate was made without memory", "estimate with memory on")
        value = stats.peak_over_baseline_mb
        released = value if stats.released_over_baseline_mb is None else min(value, stats.released_over_baseline_mb)
        return value, released * (1 - MEMORY_BAND_OTHER_DEVICE), value * (1 + MEMORY_BAND_OTHER_DEVICE)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"device": self.device, "threads": self.threads, "predicted": True,
                                "latency_ms": self.prediction.to_dict(), "host_basis": self.host.to_dict()}
        if self.host.memory_stats is not None:
            value, low, high = self.memory()
            data["memory_mb"] = {"peak_over_baseline_mb": round(value, 2), "low": round(low, 2),
                                 "high": round(high, 2), "band": MEMORY_BAND_OTHER_DEVICE}
        if self.decode is not None:
            value, low, high = self.tokens_per_s()
            data["decode_ms_per_token"] = self.decode.to_dict()
            data["tokens_per_s"] = {"value": round(value, 3), "low": round(low, 3), "high": round(high, 3)}
        return data


def estimate(onnx_path: Path | str, device: DeviceProfile | str, *, threads: int | None = None, batch: int = 1,
             seq_len: int = 128, runs: int = 100, warmup: int = 20, memory: bool = True,
             new_tokens: int = DEFAULT_NEW_TOKENS) -> Estimate:
    """Predict ``onnx_path`` on ``device`` from one-thread measurements on this host; a decoder's decode ms/token
    too, from its ``new_tokens`` decode steps measured here after a ``seq_len`` prompt."""
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    basis = measure_basis(onnx_path, batch=batch, seq_len=seq_len, runs=runs, warmup=warmup, memory=memory,
                          new_tokens=new_tokens)
    return predict_from(basis, device, threads=threads)


@dataclass
class HostBasis:
    """What every prediction of one model is scaled from: the model measured on this host at one thread, whole and
    per operator. It does not depend on the target, so one basis serves every device profile (``edgeprune sweep``
    measures it once per model); it is only valid on the host that measured it (its GEMM rates are that host's)."""

    onnx_path: Path
    host: Measurement
    operators: OperatorProfile


def measure_basis(onnx_path: Path | str, *, batch: int = 1, seq_len: int = 128, runs: int = 100, warmup: int = 20,
                  memory: bool = True, new_tokens: int = DEFAULT_NEW_TOKENS) -> HostBasis:
    """Measure ``onnx_path`` here at one thread, whole (latency, peak memory, a decoder's decode steps) and per
    operator: the basis ``predict_from`` moves to other devices."""
    host = profile(onnx_path, "host", threads=1, batch=batch, seq_len=seq_len, runs=runs, warmup=warmup,
                   memory=memory, new_tokens=new_tokens)
    return HostBasis(Path(onnx_path), host, profile_operators(onnx_path, threads=1, batch=batch, seq_len=seq_len))


def predict_from(basis: HostBasis, device: DeviceProfile | str, *, threads: int | None = None) -> Estimate:
    """``basis`` moved to ``device`` (at ``threads``, default the profile's): no timing of the model, only this
    host's cached GEMM and bandwidth rates (measured once per host by ``characterize``)."""
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    host = basis.host
    threads = threads or device.runtime.threads
    prediction = predict_latency(basis.operators, device, threads=threads, measured_ms=host.latency_stats.p50)
    decode = None
    if (generation := host.generation) is not None:
        context = generation.prompt_tokens + (generation.new_tokens - 1) / 2  # the cache's mean length over the steps
        decode = predict_decode(decode_traffic(basis.onnx_path), generation.decode.p50, context, device,
                                threads=threads, forward_ratio=prediction.latency_ms / host.latency_stats.p50)
    return Estimate(device=device.name, threads=threads, prediction=prediction, host=host, decode=decode)


def profile(onnx_path: Path | str, device: DeviceProfile | str = "host", *, threads: int | None = None,
            batch: int = 1, seq_len: int = 128, runs: int = 100, warmup: int = 20,
            memory: bool = True, new_tokens: int = DEFAULT_NEW_TOKENS) -> Measurement:
    """Measure ``onnx_path`` on this host with the device profile's runtime settings. A decoder exported with its
    key/value cache is timed as a prefill of ``seq_len`` tokens, then generates ``new_tokens`` (decode ms/token,
    tokens/s), and its peak memory holds the cache at ``seq_len + new_tokens``."""
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    if not device.is_host:
        raise ProfileError(f"'{device.name}' is not this host, so it cannot be measured here",
                           "use edgeprune.profiling.estimate for a prediction with an error band")
    onnx_path = Path(onnx_path)
    decoder = runtime.takes_cache(onnx_path)
    new_tokens = new_tokens if decoder else 0
    runtime.check_seq_len(onnx_path, seq_len + new_tokens)
    threads = threads or device.runtime.threads
    state = check_health()
    latency = measure_latency(onnx_path, threads, batch=batch, seq_len=seq_len, warmup=warmup, runs=runs)
    generation = measure_generation(onnx_path, threads, prompt_tokens=seq_len, new_tokens=new_tokens) \
        if decoder else None
    peak = measure_peak_memory(onnx_path, threads, batch, seq_len, new_tokens=new_tokens) if memory else None
    return Measurement(model=str(onnx_path), profile=device.name, size_mb=size_mb(onnx_path), threads=threads,
                       batch=batch, seq_len=seq_len, latency_stats=latency, memory_stats=peak, health=state,
                       generation=generation)


def measure_or_predict(onnx_path: Path | str, device: DeviceProfile | str = "host", *, threads: int | None = None,
                       batch: int = 1, seq_len: int = 128, runs: int = 100, memory: bool = True,
                       new_tokens: int = DEFAULT_NEW_TOKENS) -> ProfileResult:
    """``onnx_path`` measured when ``device`` is this host, else predicted with its band: what can be known of it
    from here."""
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    if device.is_host:
        return profile(onnx_path, device, threads=threads, batch=batch, seq_len=seq_len, runs=runs, memory=memory,
                       new_tokens=new_tokens)
    return estimate(onnx_path, device, threads=threads, batch=batch, seq_len=seq_len, runs=runs, memory=memory,
                    new_tokens=new_tokens)


__all__ = ["DEFAULT_NEW_TOKENS", "DeviceProfile", "Estimate", "Figure", "GenerationStats", "HostBasis", "HostHealth",
           "LatencyStats", "Measurement", "MemoryStats", "Prediction", "ProfileResult", "available_profiles",
           "check_health", "compare_latency", "estimate", "load_profile", "measure_basis", "measure_latency",
           "measure_or_predict", "predict_from", "profile", "speedup_interval"]

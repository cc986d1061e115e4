"""Latency of ONNX models on this host, with the evidence that the figures can be trusted.

Models are timed in interleaved rounds (one session alive at a time), so drift hits all alike.
Each round warms up until the median settles rather than for a fixed count. A measurement is
*stable* when its spread (CV, p90/p50) is small and no other process or the hypervisor took the
CPUs while it ran; an unstable one is re-measured in further rounds, up to a time budget, and
judged on its latest rounds. What stays unstable says so (``Stability.reasons``): budgets turn
it into UNCERTAIN rather than PASS, and speedups carry a bootstrap interval.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune import runtime
from edgeprune.errors import ProfileError
from edgeprune.profiling import health
from edgeprune.profiling.health import Sharing

PERCENTILES = ("p50", "p90", "p99")

clock = time.perf_counter
"""The timer every figure here is read from (a seam: tests replace it with a simulated noisy host)."""


@dataclass(frozen=True)
class StabilityRules:
    """When a latency measurement is too spread out to judge a budget on."""

    max_cv: float = 0.25
    """Standard deviation over mean. Quiet here (AMD EPYC, MiniLM fp32): 0.05-0.11 at 1-2 threads; with two
    competing busy processes on the two cores 0.17-0.27; the throttled host in the issue > 1.5."""
    max_tail: float = 1.5
    """p90 over p50. Quiet: 1.04-1.17; two competing processes 1.15-1.36; the throttled host 130."""
    floor_ms: float = 0.25
    """Spread below this is scheduler granularity, not noise: a 0.1 ms model is not unstable for 0.05 ms of
    jitter."""
    remeasure_s: float = 30.0
    """Time an unstable comparison may spend in further rounds before it is reported unstable."""
    settle: float = 0.05
    """Warm-up stops when a chunk's median is within this fraction of the previous chunk's."""


RULES = StabilityRules()
WARMUP_CHUNK = 5


@dataclass(frozen=True)
class Stability:
    """How far a measurement's samples can be trusted, and what it cost to find out."""

    cv: float
    tail: float
    """p90 / p50."""
    rounds: int
    """Interleaved rounds the figures come from."""
    remeasured_rounds: int
    """Earlier rounds measured and set aside because the figures were unstable."""
    remeasure_s: float
    sharing: Sharing
    """The worst steal / other processes' share over the rounds kept."""
    warmup_runs: int
    reasons: tuple[str, ...] = ()
    """Why the figures are unstable; empty when stable."""

    @property
    def stable(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {"stable": self.stable, "cv": round(self.cv, 4), "p90_over_p50": round(self.tail, 4),
                "rounds": self.rounds, "remeasured_rounds": self.remeasured_rounds,
                "remeasure_s": round(self.remeasure_s, 2), "warmup_runs": self.warmup_runs,
                "steal": self.sharing.steal, "others_busy": self.sharing.others_busy, "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stability:
        """The inverse of ``to_dict`` (with its rounding): a measurement made elsewhere keeps its doubts."""
        return cls(cv=float(data["cv"]), tail=float(data["p90_over_p50"]), rounds=int(data["rounds"]),
                   remeasured_rounds=int(data["remeasured_rounds"]), remeasure_s=float(data["remeasure_s"]),
                   sharing=Sharing(data["steal"], data["others_busy"]), warmup_runs=int(data["warmup_runs"]),
                   reasons=tuple(str(reason) for reason in data["reasons"]))


@dataclass
class LatencyStats:
    samples_ms: list[float] = field(repr=False)
    rounds: list[list[float]] = field(default_factory=list, repr=False)
    """The same samples by interleaved round (for the speedup bootstrap); one round when not given."""
    stability: Stability | None = None

    def __post_init__(self) -> None:
        if not self.rounds:
            self.rounds = [list(self.samples_ms)]

    def percentile(self, name: str) -> float:
        """``p50``/``p90``/``p99`` (or any ``pNN``) of the samples, in ms."""
        return float(np.percentile(self.samples_ms, float(name.lstrip("p"))))

    @property
    def p50(self) -> float:
        return self.percentile("p50")

    @property
    def p90(self) -> float:
        return self.percentile("p90")

    @property
    def p99(self) -> float:
        return self.percentile("p99")

    @property
    def doubts(self) -> list[str]:
        """Why these figures cannot be trusted (empty when they can)."""
        return list(self.stability.reasons) if self.stability else []

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """Percentiles and spread in ms; with ``samples``, every timed sample by round too (``rounds_ms``), so that
        ``from_dict`` can rebuild the figures elsewhere (the device agent sends them to its client)."""
        s = np.asarray(self.samples_ms)
        figures: dict[str, Any] = {name: self.percentile(name) for name in PERCENTILES}
        figures.update(mean=float(s.mean()), std=float(s.std()), min=float(s.min()), max=float(s.max()),
                       runs=len(s))
        data: dict[str, Any] = {k: round(v, 4) for k, v in figures.items()}
        if self.stability is not None:
            data["stability"] = self.stability.to_dict()
        if samples:
            data["rounds_ms"] = [list(r) for r in self.rounds]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        """The inverse of ``to_dict(samples=True)``: every percentile comes from the samples, as where they were
        timed; the percentiles alone cannot answer another one (p95), so a dict without samples is refused."""
        if "rounds_ms" not in data:
            raise ProfileError("these latency figures come without their samples, so they cannot be rebuilt",
                               "serialize them with to_dict(samples=True)")
        rounds = [[float(ms) for ms in r] for r in data["rounds_ms"]]
        stability = Stability.from_dict(data["stability"]) if data.get("stability") else None
        return cls([ms for r in rounds for ms in r], rounds=rounds, stability=stability)


def spread_reasons(samples_ms: Sequence[float], rules: StabilityRules = RULES) -> list[str]:
    """Why ``samples_ms`` are too spread out to judge on (empty when they are not)."""
    s = np.asarray(samples_ms, dtype=float)
    p50, p90, mean, std = np.percentile(s, 50), np.percentile(s, 90), s.mean(), s.std()
    found = []
    if std > max(rules.max_cv * mean, rules.floor_ms):
        found.append(f"latency CV {std / mean:.0%} > {rules.max_cv:.0%}")
    if p90 - p50 > max((rules.max_tail - 1) * p50, rules.floor_ms):
        found.append(f"p90/p50 {p90 / p50:.2f} > {rules.max_tail:g}")
    return found


def compare_latency(onnx_paths: list[Path], threads: int, *, rounds: int = 3, runs: int = 40, warmup: int = 10,
                    batch: int = 1, seq_len: int = 128, allow_spinning: bool = True, seed: int = 0,
                    rules: StabilityRules | None = None) -> list[LatencyStats]:
    """Time several models side by side in ``rounds`` interleaved rounds of ``runs`` each; while any model's
    figures are unstable, add rounds (all models, still interleaved) for up to ``rules.remeasure_s`` and judge
    the latest ``rounds`` (``rules``: ``RULES`` when None)."""
    rules = rules or RULES
    per_model: list[list[list[float]]] = [[] for _ in onnx_paths]
    windows: list[Sharing] = []
    warmups = [0 for _ in onnx_paths]
    remeasure_started: float | None = None
    while True:
        round_start, start = clock(), health.snapshot()
        for i, path in enumerate(onnx_paths):
            samples, warmed = _round(path, threads, batch, seq_len, warmup, runs, seed, allow_spinning, rules)
            per_model[i].append(samples)
            warmups[i] += warmed
        windows.append(health.sharing(start, health.snapshot()))
        if len(windows) < rounds:
            continue
        now = clock()
        remeasure_started = now if remeasure_started is None else remeasure_started
        spent = now - remeasure_started
        window = health.merge(windows[-rounds:])
        stats = [judged(r[-rounds:], window, len(windows) - rounds, spent, w, rules)
                 for r, w in zip(per_model, warmups)]
        round_s = now - round_start
        if all(s.stability.stable for s in stats) or spent + round_s > rules.remeasure_s:
            return stats


def measure_latency(onnx_path: Path, threads: int, *, batch: int = 1, seq_len: int = 128, warmup: int = 20,
                    runs: int = 100, rounds: int = 4, seed: int = 0, allow_spinning: bool = True,
                    rules: StabilityRules | None = None) -> LatencyStats:
    """One model's latency: ``runs`` timed runs in equal rounds (at most ``rounds``; re-measured while unstable)."""
    rounds = next(r for r in range(min(rounds, runs), 0, -1) if runs % r == 0)
    return compare_latency([onnx_path], threads, rounds=rounds, runs=runs // rounds, warmup=warmup,
                           batch=batch, seq_len=seq_len, allow_spinning=allow_spinning, seed=seed, rules=rules)[0]


def speedup_interval(base: LatencyStats, other: LatencyStats, *, confidence: float = 0.95, resamples: int = 1000,
                     seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of ``base.p50 / other.p50``: rounds are resampled in pairs (a round timed both models on
    the same host state), then the samples within each chosen round."""
    rng = np.random.default_rng(seed)
    a = [np.asarray(r) for r in base.rounds]
    b = [np.asarray(r) for r in other.rounds]
    pairs = min(len(a), len(b))
    ratios = np.empty(resamples)
    for k in range(resamples):
        chosen = rng.integers(0, pairs, pairs)
        num = np.concatenate([rng.choice(a[i], len(a[i])) for i in chosen])
        den = np.concatenate([rng.choice(b[i], len(b[i])) for i in chosen])
        ratios[k] = np.median(num) / np.median(den)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def _round(path: Path, threads: int, batch: int, seq_len: int, warmup: int, runs: int, seed: int,
           allow_spinning: bool, rules: StabilityRules) -> tuple[list[float], int]:
    """One session: warm up until settled (at most ``warmup`` runs), then ``runs`` timed runs; closed after."""
    sess = runtime.session(path, threads=threads, allow_spinning=allow_spinning)
    inputs = runtime.synthetic_feed(sess, batch, seq_len, seed)
    warmed, previous = 0, None
    while warmed < warmup:
        chunk = [_timed(sess, inputs) for _ in range(min(WARMUP_CHUNK, warmup - warmed))]
        warmed += len(chunk)
        median = float(np.median(chunk))
        if previous is not None and abs(median - previous) <= rules.settle * previous:
            break
        previous = median
    samples = [_timed(sess, inputs) for _ in range(runs)]
    del sess
    gc.collect()
    return samples, warmed


def _timed(sess: Any, inputs: dict[str, np.ndarray]) -> float:
    start = clock()
    sess.run(None, inputs)
    return (clock() - start) * 1e3


def judged(rounds: list[list[float]], sharing: Sharing, set_aside: int, spent: float, warmup_runs: int,
           rules: StabilityRules) -> LatencyStats:
    """Samples by round, with their stability: spread, and the CPU sharing while they were taken."""
    samples = [ms for r in rounds for ms in r]
    s = np.asarray(samples)
    reasons = (*spread_reasons(samples, rules), *(f"while timing, {r}" for r in sharing.reasons()))
    stability = Stability(cv=float(s.std() / s.mean()), tail=float(np.percentile(s, 90) / np.percentile(s, 50)),
                          rounds=len(rounds), remeasured_rounds=set_aside, remeasure_s=spent, sharing=sharing,
                          warmup_runs=warmup_runs, reasons=reasons)
    return LatencyStats(samples, rounds=rounds, stability=stability)

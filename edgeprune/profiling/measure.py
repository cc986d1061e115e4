"""Latency of an ONNX model on this host: warm-up, then timed runs, one session alive at a time."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeprune import runtime

PERCENTILES = ("p50", "p90", "p99")


@dataclass
class LatencyStats:
    samples_ms: list[float] = field(repr=False)

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

    def to_dict(self) -> dict[str, float]:
        s = np.asarray(self.samples_ms)
        figures = {name: self.percentile(name) for name in PERCENTILES}
        figures.update(mean=float(s.mean()), std=float(s.std()), min=float(s.min()), max=float(s.max()),
                       runs=len(s))
        return {k: round(v, 4) for k, v in figures.items()}


def measure_latency(onnx_path: Path, threads: int, *, batch: int = 1, seq_len: int = 128, warmup: int = 20,
                    runs: int = 100, seed: int = 0, allow_spinning: bool = True) -> LatencyStats:
    """Time ``runs`` inferences after ``warmup`` untimed ones; the session is closed afterwards."""
    sess = runtime.session(onnx_path, threads=threads, allow_spinning=allow_spinning)
    inputs = runtime.synthetic_feed(sess, batch, seq_len, seed)
    for _ in range(warmup):
        sess.run(None, inputs)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, inputs)
        samples.append((time.perf_counter() - start) * 1e3)
    del sess
    gc.collect()
    return LatencyStats(samples)


def compare_latency(onnx_paths: list[Path], threads: int, *, rounds: int = 3, runs: int = 40, warmup: int = 10,
                    batch: int = 1, seq_len: int = 128, allow_spinning: bool = True) -> list[LatencyStats]:
    """Time several models side by side: rounds alternate between them so drift hits all alike."""
    merged: list[list[float]] = [[] for _ in onnx_paths]
    for _ in range(rounds):
        for samples, path in zip(merged, onnx_paths):
            samples += measure_latency(path, threads, batch=batch, seq_len=seq_len, warmup=warmup, runs=runs,
                                       allow_spinning=allow_spinning).samples_ms
    return [LatencyStats(samples) for samples in merged]

"""Peak resident memory of running an ONNX model, measured in a fresh process.

A fresh process is the only honest baseline: in a long-lived one, memory freed by earlier
work is reused and the peak hides. ``memory_probe.py`` records RSS after imports (the
baseline), resets the kernel's high-water mark, creates the session and runs inference,
then reads ``VmHWM``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeprune import runtime
from edgeprune.errors import ProfileError

PROBE = Path(__file__).with_name("memory_probe.py")


@dataclass
class MemoryStats:
    baseline_mb: float
    """RSS of the probe process after imports, before the model is loaded (MiB)."""
    peak_mb: float
    """Highest RSS while creating the session and running inference (MiB)."""
    session_peak_mb: float
    """Highest RSS up to the end of session creation (MiB)."""

    @property
    def peak_over_baseline_mb(self) -> float:
        return self.peak_mb - self.baseline_mb

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "peak_over_baseline_mb": round(self.peak_over_baseline_mb, 2)}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> MemoryStats:
        return cls(baseline_mb=float(data["baseline_mb"]), peak_mb=float(data["peak_mb"]),
                   session_peak_mb=float(data["session_peak_mb"]))


def measure_peak_memory(onnx_path: Path, threads: int, batch: int = 1, seq_len: int = 128,
                        runs: int = 10, new_tokens: int = 0) -> MemoryStats:
    """Peak RSS over ``runs`` inferences of ``seq_len`` tokens; a decoder with its key/value cache also generates
    ``new_tokens`` after each, so the peak holds the cache at ``seq_len + new_tokens``."""
    sess = runtime.session(onnx_path)
    inputs = runtime.feed(sess, runtime.synthetic_feed(sess, batch, seq_len))
    with tempfile.TemporaryDirectory() as tmp:
        feed_path = Path(tmp) / "feed.npz"
        np.savez(feed_path, **inputs)
        cmd = [sys.executable, str(PROBE), str(onnx_path), str(feed_path), str(threads), str(runs), str(new_tokens)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProfileError(f"memory probe failed on '{onnx_path}' ({last})", "check that the model runs")
    return MemoryStats(**json.loads(done.stdout.strip().splitlines()[-1]))

"""Peak resident memory of running an ONNX model, measured in a fresh process.

A fresh process is the only honest baseline: in a long-lived one, memory freed by earlier
work is reused and the peak hides. ``memory_probe.py`` records RSS after imports (the
baseline), resets the kernel's high-water mark, creates the session and runs inference,
then reads ``VmHWM``.

The probe runs in several fresh processes. On glibc, a freed block below the allocator's mmap threshold stays in
the process, and glibc raises that threshold when a large block is freed, so the copies
onnxruntime frees while it loads and pre-packs weights stay resident: with the default
allocator BERT-base int8 peaks at 192 MiB here, with one that returns every freed block at
138 MiB. Which of the two a device is closer to depends on its allocator (glibc on a
Raspberry Pi or a Jetson; scudo on Android, which unmaps large blocks as they are freed), so
the run with glibc's threshold fixed gives predictions their low end. With the default
allocator the peak also depends on where the kernel placed the heap (address-space layout
randomization): MobileBERT fp32 peaks at 126 MiB in most fresh processes and at 191 MiB in
about a third of them (always 126 with randomization off); with the releasing one, MobileBERT
int8 at 70 or 83 MiB. So each allocator is measured in ``ALLOCATOR_RUNS`` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edgeprune import runtime
from edgeprune.errors import ProfileError

PROBE = Path(__file__).with_name("memory_probe.py")
RELEASING_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
"""glibc settings under which every freed block of 128 KiB or more goes back to the system at once (a fixed
threshold also stops glibc from raising it)."""
ALLOCATOR_RUNS = 3
"""Fresh processes measured per allocator. The peak depends on the heap's place in the address space, in a few
modes: a high mode seen in a third of starts is missed by all three in 30% of measurements, against two thirds for
one. The default allocator's figure is the highest of its runs (a budget must hold at every start), the releasing
one's the lowest (the low end of a band)."""


@dataclass
class MemoryStats:
    baseline_mb: float
    """RSS of the probe process after imports, before the model is loaded (MiB)."""
    peak_mb: float
    """Highest RSS while creating the session and running inference (MiB), in the default allocator's highest
    process."""
    session_peak_mb: float
    """Highest RSS up to the end of session creation (MiB)."""
    released_over_baseline_mb: float | None = None
    """Peak over baseline of the same runs under an allocator that returns freed blocks at once
    (``RELEASING_ALLOCATOR``, the lowest of its processes); None in figures recorded before it was measured."""

    @property
    def peak_over_baseline_mb(self) -> float:
        return self.peak_mb - self.baseline_mb

    def to_dict(self) -> dict[str, float]:
        data = {**asdict(self), "peak_over_baseline_mb": round(self.peak_over_baseline_mb, 2)}
        if self.released_over_baseline_mb is None:
            del data["released_over_baseline_mb"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> MemoryStats:
        released = data.get("released_over_baseline_mb")
        return cls(baseline_mb=float(data["baseline_mb"]), peak_mb=float(data["peak_mb"]),
                   session_peak_mb=float(data["session_peak_mb"]),
                   released_over_baseline_mb=None if released is None else float(released))


def measure_peak_memory(onnx_path: Path, threads: int, batch: int = 1, seq_len: int = 128,
                        runs: int = 10, new_tokens: int = 0) -> MemoryStats:
    """Peak RSS over ``runs`` inferences of ``seq_len`` tokens: the highest of ``ALLOCATOR_RUNS`` processes with the
    default allocator, and the lowest of as many with an allocator that releases freed blocks at once. A decoder
    with its key/value cache also generates ``new_tokens`` after each, so the peak holds the cache at
    ``seq_len + new_tokens``."""
    sess = runtime.session(onnx_path)
    inputs = runtime.feed(sess, runtime.synthetic_feed(sess, batch, seq_len))
    with tempfile.TemporaryDirectory() as tmp:
        feed_path = Path(tmp) / "feed.npz"
        np.savez(feed_path, **inputs)
        cmd = [sys.executable, str(PROBE), str(onnx_path), str(feed_path), str(threads), str(runs), str(new_tokens)]
        default = [MemoryStats(**_probe(cmd, onnx_path, {})) for _ in range(ALLOCATOR_RUNS)]
        releasing = [MemoryStats(**_probe(cmd, onnx_path, RELEASING_ALLOCATOR)) for _ in range(ALLOCATOR_RUNS)]
    return replace(max(default, key=lambda run: run.peak_over_baseline_mb),
                   released_over_baseline_mb=min(run.peak_over_baseline_mb for run in releasing))


def _probe(cmd: list[str], onnx_path: Path, allocator: dict[str, str]) -> dict[str, float]:
    env = {key: value for key, value in os.environ.items() if key not in RELEASING_ALLOCATOR}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**env, **allocator})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProfileError(f"memory probe failed on '{onnx_path}' ({last})", "check that the model runs")
    return json.loads(done.stdout.strip().splitlines()[-1])

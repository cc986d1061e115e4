"""Pruning-stage options: one object, checked once, shared by the CLI, ``prune``, ``optimize`` and the search.

It imports nothing heavy, so the CLI can build it (and refuse a bad value) before torch is
loaded and before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgeprune.errors import BadArgumentError

CRITERIA = ("magnitude", "activation", "fluctuation", "taylor", "fisher")
ALLOCATIONS = ("uniform", "global")
ACCUMULATIONS = ("sum", "ema")
RECOVERY_METHODS = ("none", "bias", "lstsq", "distill")


@dataclass(frozen=True)
class PruneOptions:
    """How units are scored, allocated and recovered.

    The defaults are the best combination measured by benchmarks/quality.py on
    all-MiniLM-L6-v2 at 2.6x int8 speedup (keep 75% of encoder FLOPs): Fisher importance,
    mean accumulation, least-squares recovery — STS-B 86.60 (dense 86.72), AG News accuracy
    with the dense model's probe 87.6 (dense 88.2), 41 s for scoring and recovery on 2 cores.
    """

    criterion: str = "fisher"
    allocation: str = "uniform"
    """``uniform`` (the same ratio in every layer) or ``global`` (all units ranked by score per MAC)."""
    accumulate: str = "sum"
    """How per-batch scores combine: ``sum`` (a running mean) or ``ema`` with ``ema_decay``."""
    ema_decay: float = 0.9
    calibration: str | None = None
    """Calibration data: a text file (one text per line) or, for image models, a folder of images;
    None = the built-in sentences (text models)."""
    recover: str = "lstsq"
    distill_steps: int = 400
    batch_size: int = 16
    """Calibration texts (or images) per batch."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (("criterion", self.criterion, CRITERIA),
                                     ("allocation", self.allocation, ALLOCATIONS),
                                     ("accumulate", self.accumulate, ACCUMULATIONS),
                                     ("recover", self.recover, RECOVERY_METHODS)):
            if value not in allowed:
                raise BadArgumentError(f"unknown --{name} '{value}'", f"choose one of: {', '.join(allowed)}")
        if not (math.isfinite(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
            raise BadArgumentError(f"--ema-decay {self.ema_decay} is outside [0, 1)", "pass a decay such as 0.9")
        if self.distill_steps < 1:
            raise BadArgumentError(f"--distill-steps {self.distill_steps} is not positive",
                                   "pass a step count such as 400")
        if self.batch_size < 1:
            raise BadArgumentError(f"--batch {self.batch_size} is not positive", "pass a batch size such as 16")

    @property
    def needs_data(self) -> bool:
        """Scoring or recovery reads calibration inputs."""
        return self.criterion != "magnitude" or self.recover != "none"


def check_target(keep_flops: float | None, heads_ratio: float | None, ffn_ratio: float | None) -> None:
    """Refuse a pruning target that cannot be met, before minutes of scoring."""
    if keep_flops is not None and (heads_ratio is not None or ffn_ratio is not None):
        raise BadArgumentError("--keep-flops cannot be combined with --heads-ratio/--ffn-ratio",
                               "give either a FLOPs fraction or per-unit ratios")
    for name, value in (("--keep-flops", keep_flops), ("--heads-ratio", heads_ratio), ("--ffn-ratio", ffn_ratio)):
        if value is not None and not 0.0 < value <= 1.0:
            raise BadArgumentError(f"{name} {value} is outside (0, 1]", "pass the fraction to keep, e.g. 0.5")


PERCENTILES = ("p50", "p90", "p95", "p99")


def check_percentile(percentile: str) -> None:
    if percentile not in PERCENTILES:
        raise BadArgumentError(f"unknown percentile '{percentile}'", f"use one of: {', '.join(PERCENTILES)}")


def check_measurement(threads: int | None = None, batch: int = 1, seq_len: int = 128, runs: int = 1) -> None:
    """Refuse thread, batch, sequence and run counts that cannot be measured (zero, negative)."""
    for name, count in (("--threads", threads), ("--batch", batch), ("--seq-len", seq_len), ("--runs", runs)):
        if count is not None and count < 1:
            raise BadArgumentError(f"{name} {count} is not positive", f"pass {name} 1 or more")


def check_positive(**values: float | None) -> None:
    """Refuse budgets and factors that are not positive finite numbers (inf, NaN, 0, negative)."""
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is not None and not (math.isfinite(value) and value > 0):
            raise BadArgumentError(f"{flag} {value} is not a positive finite number", f"pass {flag} greater than 0")

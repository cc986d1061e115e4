"""Prune a loaded model the way the CLI does: read calibration text, prune, recover, keep the tokenizer.

``edgeprune prune`` and the ``optimize`` pipeline both come through here, so the same
options give the same model from either.
"""

from __future__ import annotations

from pathlib import Path

from edgeprune.models.loading import LoadedModel
from edgeprune.prune import Accumulation, PruningPlan, prune
from edgeprune.prune.calibration import batches_for
from edgeprune.prune.recover import DISTILL_STEPS, Tick

DEFAULT_CRITERION, DEFAULT_ACCUMULATE, DEFAULT_ALLOCATION, DEFAULT_RECOVERY = "fisher", "sum", "uniform", "lstsq"
"""The best combination measured by benchmarks/quality.py on all-MiniLM-L6-v2 at 2.6x int8 speedup
(keep 75% of encoder FLOPs): STS-B 86.60 (dense 86.72), AG News accuracy with the dense model's
probe 87.6 (dense 88.2), 41 s for scoring and recovery on 2 cores."""
DEFAULT_EMA_DECAY = 0.9


def prune_loaded(dense: LoadedModel, *, keep_flops: float | None = None, heads_ratio: float | None = None,
                 ffn_ratio: float | None = None, criterion: str = DEFAULT_CRITERION,
                 allocation: str = DEFAULT_ALLOCATION, accumulate: str = DEFAULT_ACCUMULATE,
                 ema_decay: float = DEFAULT_EMA_DECAY, calibration: Path | str | None = None,
                 recover: str = DEFAULT_RECOVERY, distill_steps: int | None = None, seed: int = 0,
                 tick: Tick | None = None, plan: PruningPlan | None = None) -> LoadedModel:
    """Prune ``dense`` (calibration text from ``calibration``, else built-in sentences, when needed).

    ``distill_steps`` None means the library default; a ready ``plan`` replaces the target and scoring.
    """
    batches = batches_for(criterion, recover, dense.tokenizer, calibration)
    model, plan = prune(dense.model, keep_flops=keep_flops, heads_ratio=heads_ratio, ffn_ratio=ffn_ratio,
                        criterion=criterion, batches=batches, accumulation=Accumulation(accumulate, ema_decay),
                        allocation=allocation, recovery=recover, seed=seed, tick=tick,
                        distill_steps=DISTILL_STEPS if distill_steps is None else distill_steps, plan=plan)
    return LoadedModel(model, dense.tokenizer, dense.path, dense.task, dense.pooling, plan)

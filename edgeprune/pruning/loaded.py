"""Prune a loaded model the way the CLI does: read calibration data, prune, recover, keep the processor.

``edgeprune prune``, the ``optimize`` pipeline and the search all come through here, so the
same ``PruneOptions`` give the same model from any of them.
"""

from __future__ import annotations

from edgeprune.models.loading import LoadedModel
from edgeprune.options import PruneOptions
from edgeprune.pruning import DEFAULTS, PruningPlan, prune
from edgeprune.pruning.calibration import calibration_batches_for
from edgeprune.pruning.recover import Tick


def prune_loaded(dense: LoadedModel, *, keep_flops: float | None = None, heads_ratio: float | None = None,
                 ffn_ratio: float | None = None, options: PruneOptions = DEFAULTS, tick: Tick | None = None,
                 plan: PruningPlan | None = None) -> LoadedModel:
    """Prune ``dense`` (calibration data from ``options.calibration``, else built-in sentences, when needed).

    A ready ``plan`` replaces the target and scoring.
    """
    model, plan = prune(dense.model, keep_flops=keep_flops, heads_ratio=heads_ratio, ffn_ratio=ffn_ratio,
                        options=options, batches=calibration_batches_for(dense, options), tick=tick, plan=plan)
    return LoadedModel(model, dense.processor, dense.path, dense.task, dense.pooling, plan)

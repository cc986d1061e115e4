"""Budgeted search for decoders: the least pruning whose int4 model decodes at the required tokens/s on this host.

A decoder's per-token step streams its weights, so its decode ms/token is close to linear in
the share of the prunable layers it keeps: ms(k) ≈ a + b·k, where a (the LM head, embeddings,
norms, the cache) does not shrink. The dense int4 model gives ms(1); the first candidate assumes
a = 0, every later one fits the line through the two measured points nearest the budget (the
secant) and aims ``TIMING_MARGIN`` inside it, since the final check re-measures. Importance is
scored once; each candidate is pruned and recovered with the given ``PruneOptions``, exported
(parity-checked), quantized to int4 and timed side by side with the dense int4 model
(``compare_decode``: drift hits both), at most ``BUILDS`` builds. When the dense int4
model is fast enough, the one candidate is the unpruned model. The kept candidate is the
largest fraction that met the budget, or the fastest when none did (the run then fails with the
closest result reported).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.exporting import ExportResult, export
from edgeprune.models.loading import LoadedModel
from edgeprune.options import PruneOptions
from edgeprune.profiling.generation import compare_decode
from edgeprune.pruning import Accumulation, make_plan, score
from edgeprune.pruning.calibration import calibration_batches_for
from edgeprune.pruning.loaded import prune_loaded
from edgeprune.quantization.forms import weight_only_int4
from edgeprune.search.choice import TIMING_MARGIN

BUILDS = 3
MIN_KEEP = 0.2
"""Below this share of the layers a small decoder no longer writes text; the search does not go lower."""


@dataclass
class DecodeCandidate:
    keep_flops: float
    decode_ms: float
    """int4 ms/token, median, measured beside the dense int4 model."""
    dense_int4_ms: float
    """The dense int4 model's ms/token in the same rounds."""
    met: bool
    doubts: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return 1e3 / self.decode_ms


@dataclass
class DecodeSearch:
    tokens_per_s: float
    candidates: list[DecodeCandidate]
    chosen_keep_flops: float | None
    """The largest fraction that met the budget; None when none did."""
    kept: LoadedModel = field(repr=False)
    """The chosen candidate's model, or the fastest one's."""
    exported: ExportResult = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"tokens_per_s": self.tokens_per_s, "chosen_keep_flops": self.chosen_keep_flops,
                "candidates": [{**asdict(c), "tokens_per_s": round(c.tokens_per_s, 2)} for c in self.candidates]}


def next_keep(points: list[tuple[float, float]], target_ms: float) -> float:
    """The keep fraction a line through measured (keep, ms) ``points`` predicts at ``target_ms``: through the origin
    with one point, through the two nearest the target with more; clipped to [MIN_KEEP, 1]."""
    ranked = sorted(points, key=lambda p: abs(p[1] - target_ms))
    if len(ranked) == 1 or ranked[0][0] == ranked[1][0]:
        keep, ms = ranked[0]
        guess = keep * target_ms / ms
    else:
        (k1, m1), (k2, m2) = ranked[:2]
        slope = (m1 - m2) / (k1 - k2)
        guess = k1 + (target_ms - m1) / slope if slope > 0 else k1 * target_ms / m1
    return min(1.0, max(MIN_KEEP, round(guess, 3)))


def search_decode(dense: LoadedModel, tokens_per_s: float, dense_int4: Path, work: Path, *,
                  options: PruneOptions, threads: int, prompt_tokens: int, new_tokens: int) -> DecodeSearch:
    """Search (see the module docstring); ``dense_int4`` is the dense model's int4 file, the baseline every
    candidate is timed beside."""
    batches = calibration_batches_for(dense, options)
    scores = score(dense.model, options.criterion, batches, Accumulation(options.accumulate, options.ema_decay),
                   options.seed)
    target_ms = 1e3 / tokens_per_s * TIMING_MARGIN
    dense_ms = compare_decode([dense_int4], threads, prompt_tokens=prompt_tokens, new_tokens=new_tokens)[0].p50
    points, candidates, builds = [(1.0, dense_ms)], [], {}
    for _ in range(BUILDS):
        keep = next_keep(points, target_ms)
        if keep in builds:
            break
        plan = make_plan(dense.model, keep_flops=keep, criterion=options.criterion, allocation=options.allocation,
                         seed=options.seed, scores=scores)
        pruned = prune_loaded(dense, options=options, plan=plan)
        folder = work / f"keep-{keep:.3f}"
        folder.mkdir(parents=True)
        exported = export(pruned, folder / "onnx")
        int4 = weight_only_int4(exported.onnx_path, folder / "model.int4.onnx")
        base, measured = compare_decode([dense_int4, int4], threads, prompt_tokens=prompt_tokens,
                                        new_tokens=new_tokens)
        candidate = DecodeCandidate(keep, measured.p50, base.p50, 1e3 / measured.p50 >= tokens_per_s,
                                    [*base.doubts, *measured.doubts])
        candidates.append(candidate)
        builds[keep] = (pruned, exported)
        # relative to this round's dense int4, so drift between rounds does not bend the line
        points.append((keep, measured.p50 * dense_ms / base.p50))
    met = [c for c in candidates if c.met]
    kept = max(met, key=lambda c: c.keep_flops) if met else min(candidates, key=lambda c: c.decode_ms)
    pruned, exported = builds[kept.keep_flops]
    return DecodeSearch(tokens_per_s, candidates, kept.keep_flops if met else None, pruned, exported)

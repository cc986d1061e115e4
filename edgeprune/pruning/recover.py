"""Recovery after pruning: win back the dense model's outputs without task labels.

``lstsq`` (retraining-free) re-fits each output projection — attention output and FFN
output, weight and bias where there is one — layer by layer, so that the projection's output
plus the residual matches the dense model where the block reads that sum (the adapter's
``attn_sum``/``ffn_sum``: the LayerNorm input of a post-norm block, the next norm's input or
the block output of a pre-norm one). Inputs
come from the already-recovered pruned model, so each fit also absorbs the error of the
layers before it. The fit is ridge-regularised towards the current weights; the ridge
strength is chosen on held-aside calibration batches, and a projection keeps its old
weights when no fit lowers the held-aside error.

``bias`` is FLAP's baseline bias compensation (An et al., 2024): each removed input channel of
an output projection is replaced by its mean over the dense model's calibration tokens, i.e.
``W[:, removed] · mean(X[removed])`` is folded into the projection's bias (which the adapter
adds where the architecture has none). It is exact for channels that do not vary, and costs
one dense forward pass.

``distill`` runs a short knowledge distillation from the dense teacher on the same
unlabeled calibration data (token-state MSE, or logit KL for classifiers and language models),
after ``lstsq``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from edgeprune.errors import PlanError
from edgeprune.models import ModelAdapter
from edgeprune.models.base import POST_NORM, token_mask
from edgeprune.models.plan import PruningPlan
from edgeprune.options import RECOVERY_METHODS
from edgeprune.pruning.importance import capture_inputs

DAMPING_GRID = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""Ridge strengths tried, relative to the mean diagonal of XᵀX; held-aside data picks one."""
HOLDOUT_EVERY = 4
"""Every 4th calibration batch (the last one when there are fewer) is held aside to choose the ridge
strength and validate the fit."""
DISTILL_STEPS = 400
DISTILL_LR = 3e-4

Batch = dict[str, torch.Tensor]
Tick = Callable[[int, int], None]
"""Progress callback: (done, total)."""


@dataclass
class ProjectionFit:
    """Held-aside reconstruction error of one projection, relative to the target's energy."""

    name: str
    error_before: float
    error_after: float
    damping: float | None
    """The chosen relative ridge strength, None when the old weights were kept."""


@dataclass
class RecoveryReport:
    method: str
    fits: list[ProjectionFit] = field(default_factory=list)
    distill_steps: int = 0
    distill_loss: tuple[float, float] | None = None
    """Mean distillation loss over the first and the last 10% of steps."""
    compensated: int = 0
    """Output projections whose bias absorbed the mean of their removed channels."""

    def summary(self) -> dict[str, object]:
        """The figures recorded in the pruning plan."""
        data: dict[str, object] = {"method": self.method}
        if self.fits:
            data["refit"] = sum(f.damping is not None for f in self.fits)
            data["projections"] = len(self.fits)
            data["held_out_error_before"] = round(sum(f.error_before for f in self.fits) / len(self.fits), 5)
            data["held_out_error_after"] = round(sum(f.error_after for f in self.fits) / len(self.fits), 5)
        if self.compensated:
            data["compensated_projections"] = self.compensated
        if self.distill_steps:
            data["distill_steps"] = self.distill_steps
            data["distill_loss_first_last"] = [round(v, 6) for v in self.distill_loss or ()]
        return data


def check_recovery(method: str, distill_steps: int = DISTILL_STEPS) -> None:
    """Refuse an unknown method or a step count that cannot run, before any work is done."""
    if method not in RECOVERY_METHODS:
        raise PlanError(f"unknown recovery '{method}'", f"choose one of: {', '.join(RECOVERY_METHODS)}")
    if method == "distill":
        _check_steps(distill_steps)


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise PlanError(f"--distill-steps {steps} is not positive", "pass a step count such as 400")


def recover(dense: nn.Module, pruned: nn.Module, adapter: ModelAdapter, batches: list[Batch], method: str,
            plan: PruningPlan, distill_steps: int = DISTILL_STEPS, seed: int = 0,
            tick: Tick | None = None) -> RecoveryReport:
    """Recover ``pruned`` (made from ``dense`` by ``plan``) in place towards ``dense`` on calibration ``batches``."""
    check_recovery(method, distill_steps)
    report = RecoveryReport(method)
    if method == "none":
        return report
    if not batches:
        raise PlanError(f"--recover {method} needs calibration text and got none", "pass --calibration FILE")
    if method == "bias":
        report.compensated = compensate_bias(dense, pruned, adapter, batches, plan)
        return report
    report.fits = least_squares(dense, pruned, adapter, batches, tick)
    if method == "distill":
        report.distill_steps = distill_steps
        report.distill_loss = distill(dense, pruned, batches, distill_steps, seed=seed, tick=tick)
    return report


@torch.no_grad()
def compensate_bias(dense: nn.Module, pruned: nn.Module, adapter: ModelAdapter, batches: list[Batch],
                    plan: PruningPlan) -> int:
    """Fold the mean contribution of every removed output-projection input channel into that projection's bias
    (see the module docstring); returns how many projections changed."""
    dense_layers = adapter.layers(dense)
    sums = [[torch.zeros(p.in_features, dtype=torch.float64) for p in (d.attn_out, d.ffn_out)] for d in dense_layers]
    count = 0
    for batch in batches:
        with capture_inputs(dense_layers) as captured:
            dense(**batch)
        real = token_mask(batch, captured[0][0])
        count += int(real.sum())
        for layer_sums, inputs in zip(sums, captured):
            for total, x in zip(layer_sums, inputs):
                total += x[real].double().sum(dim=0)
    adapter.add_output_biases(pruned)
    changed = 0
    for d, p, kept, layer_sums in zip(dense_layers, adapter.layers(pruned), plan.layers, sums):
        kept_cols = (torch.tensor(kept.heads)[:, None] * d.unit_width + torch.arange(d.unit_width)).flatten()
        for dense_proj, proj, cols, total in ((d.attn_out, p.attn_out, kept_cols, layer_sums[0]),
                                              (d.ffn_out, p.ffn_out, torch.tensor(kept.neurons), layer_sums[1])):
            removed = torch.ones(dense_proj.in_features, dtype=torch.bool)
            removed[cols] = False
            if removed.any():
                shift = dense_proj.weight.double()[:, removed] @ (total[removed] / count)
                proj.bias += shift.to(proj.bias.dtype)
                changed += 1
    return changed


@torch.no_grad()
def least_squares(dense: nn.Module, pruned: nn.Module, adapter: ModelAdapter, batches: list[Batch],
                  tick: Tick | None = None) -> list[ProjectionFit]:
    """Re-fit every output projection of ``pruned`` in forward order (see the module docstring).

    Each layer is replayed on its own from cached inputs (the call arguments a layer got in
    one real forward, with the hidden states swapped in), so the whole fit costs about one
    dense and three pruned forward passes instead of one per projection.
    """
    if len(batches) < 2:
        raise PlanError("least-squares recovery needs at least 2 calibration batches (one is held aside)",
                        "pass more calibration text (32 texts or more)")
    dense_layers, pruned_layers = adapter.layers(dense), adapter.layers(pruned)
    dense_calls = [_block_call(dense, dense_layers[0].block, batch) for batch in batches]
    pruned_calls = [_block_call(pruned, pruned_layers[0].block, batch) for batch in batches]
    held = held_aside(len(batches))
    post_norm = adapter.residual == POST_NORM
    fits = []
    for i, (d, p) in enumerate(zip(dense_layers, pruned_layers)):
        targets: list[dict[nn.Module, torch.Tensor]] = []
        for b, call in enumerate(dense_calls):
            out, seen = _replay(d.block, call, watch=tuple(m for m in (d.attn_sum, d.ffn_sum) if m is not None))
            tokens = token_mask(batches[b], out)
            targets.append({p.attn_out: _at(d.attn_sum, seen, out)[tokens],
                            p.ffn_out: _at(d.ffn_sum, seen, out)[tokens]})
            dense_calls[b] = _with_states(call, out)
        for proj, point in ((p.attn_out, p.attn_sum), (p.ffn_out, p.ffn_sum)):
            samples = []
            for b, call in enumerate(pruned_calls):
                out, seen = _replay(p.block, call, watch=(proj,) if point is None else (proj, point), stop=point)
                tokens = token_mask(batches[b], seen[proj])
                inputs, pruned_sum = seen[proj][tokens], _at(point, seen, out)[tokens]
                dense_sum = targets[b][proj]
                # The residual the pruned model adds is its sum minus this projection's output.
                weight = 1.0 / dense_sum.double().std(dim=-1, keepdim=True) if post_norm else 1.0
                samples.append((inputs, dense_sum - (pruned_sum - proj(inputs)), weight, held[b]))
            fits.append(_refit(f"layer {i} {'attention' if proj is p.attn_out else 'ffn'}", proj, samples))
            if tick:
                tick(len(fits), 2 * len(pruned_layers))
        pruned_calls = [_with_states(call, _replay(p.block, call)[0]) for call in pruned_calls]
    return fits


def _at(point: nn.Module | None, seen: dict[nn.Module, torch.Tensor],
        block_output: torch.Tensor | None) -> torch.Tensor:
    """The residual sum read at ``point`` (a watched module's input), or the block's output when ``point`` is None."""
    return block_output if point is None else seen[point]


@dataclass
class Normal:
    """Accumulated normal equations of one linear map: G = XᵀX, C = XᵀT, t = ‖T‖² (X with a ones column
    when the map has a bias)."""

    gram: torch.Tensor
    cross: torch.Tensor
    bias: bool = True
    energy: float = 0.0

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool) -> Normal:
        width = in_features + int(bias)
        return cls(torch.zeros(width, width, dtype=torch.float64),
                   torch.zeros(width, out_features, dtype=torch.float64), bias)

    def add(self, inputs: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
        x = inputs.double()
        if self.bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        x, targets = x * weight, targets.double() * weight
        self.gram += x.T @ x
        self.cross += x.T @ targets
        self.energy += float(targets.pow(2).sum())

    def error(self, weight: torch.Tensor) -> float:
        """‖XWᵀ − T‖² / ‖T‖² for an (augmented) weight W = [weight | bias], without the data."""
        residual = (weight @ self.gram * weight).sum() - 2 * (weight * self.cross.T).sum() + self.energy
        return float(residual) / max(self.energy, 1e-30)


@torch.no_grad()
def ridge_refit(layer: nn.Module, fit: Normal, held: Normal) -> tuple[float, float, float | None]:
    """Re-fit ``layer`` (a linear map: ``nn.Linear`` or a 1×1 convolution) on ``fit``, ridge toward its
    current weights with the strength that minimizes the ``held``-aside error; keep its weights when no
    strength beats them. Returns (held-aside error before, after, chosen damping or None)."""
    current = layer.weight.reshape(layer.weight.shape[0], -1).double()
    if fit.bias:
        current = torch.cat([current, layer.bias[:, None].double()], dim=1)
    before = held.error(current)
    best = (before, None, current)
    width = len(fit.gram)
    scale = float(fit.gram.diagonal()[:width - int(fit.bias)].mean())
    eye = torch.eye(width, dtype=torch.float64)
    for damping in DAMPING_GRID:
        ridge = damping * scale
        try:
            weight = torch.linalg.solve(fit.gram + ridge * eye, fit.cross + ridge * current.T).T
        except torch.linalg.LinAlgError:
            continue  # singular even with this ridge; a stronger one may still solve
        error = held.error(weight)
        if error < best[0]:
            best = (error, damping, weight)
    error, damping, weight = best
    if damping is not None:
        columns = layer.weight[0].numel()
        layer.weight.copy_(weight[:, :columns].reshape(layer.weight.shape).to(layer.weight.dtype))
        if fit.bias:
            layer.bias.copy_(weight[:, -1].to(layer.bias.dtype))
    return before, error, damping


def _refit(name: str, proj: nn.Linear,
           samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | float, bool]]) -> ProjectionFit:
    """Ridge re-fit of ``proj`` (with its bias, if it has one) on (inputs, targets, token weights, held-aside?)
    samples (see ``ridge_refit``).

    In post-norm blocks tokens are weighted by 1/σ of the dense norm input: the LayerNorm divides
    each token by its σ, so this matches the error the next layer sees, and a few large-norm
    tokens cannot dominate the fit. In pre-norm blocks the sum itself flows on: weight 1.
    """
    fit, held = (Normal.empty(proj.in_features, proj.out_features, bias=proj.bias is not None) for _ in range(2))
    for inputs, targets, weight, aside in samples:
        (held if aside else fit).add(inputs, targets, weight)
    before, error, damping = ridge_refit(proj, fit, held)
    return ProjectionFit(name, before, error, damping)


def held_aside(count: int) -> list[bool]:
    """Which of ``count`` calibration batches are held aside: every HOLDOUT_EVERY-th, or the last when fewer."""
    return [i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 or (count < HOLDOUT_EVERY and i == count - 1)
            for i in range(count)]


Call = tuple[tuple[object, ...], dict[str, object]]
"""The positional and keyword arguments one encoder layer received; hidden states first."""


class _Reached(Exception):
    """Raised by a hook to stop a forward pass once the captured point has been computed."""


def _block_call(model: nn.Module, block: nn.Module, batch: Batch) -> Call:
    """The arguments ``block`` receives when ``model`` runs on ``batch`` (the forward stops there)."""
    captured: list[Call] = []

    def record(_module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        captured.append((args, kwargs))
        raise _Reached

    hook = block.register_forward_pre_hook(record, with_kwargs=True)
    try:
        model(**batch)
    except _Reached:
        pass
    finally:
        hook.remove()
    return captured[0]


def _with_states(call: Call, states: torch.Tensor) -> Call:
    args, kwargs = call
    return (states, *args[1:]), kwargs


def _replay(block: nn.Module, call: Call, watch: tuple[nn.Module, ...] = (),
            stop: nn.Module | None = None) -> tuple[torch.Tensor | None, dict[nn.Module, torch.Tensor]]:
    """Run one layer on ``call``: its output states (None when stopped at ``stop``) and each watched module's input."""
    seen: dict[nn.Module, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen[module] = args[0]
        if module is stop:
            raise _Reached

    hooks = [m.register_forward_pre_hook(record) for m in watch]
    args, kwargs = call
    try:
        out = block(*args, **kwargs)
    except _Reached:
        return None, seen
    finally:
        for hook in hooks:
            hook.remove()
    return (out[0] if isinstance(out, tuple) else out), seen


def distill(teacher: nn.Module, student: nn.Module, batches: list[Batch], steps: int, lr: float = DISTILL_LR,
            seed: int = 0, tick: Tick | None = None) -> tuple[float, float]:
    """Train ``student`` for ``steps`` batches to reproduce ``teacher``; returns the early and late mean loss.

    Dropout stays off (eval mode) so the run is deterministic under ``seed``; the learning
    rate decays linearly to zero.
    """
    _check_steps(steps)
    generator = torch.Generator().manual_seed(seed)
    order = itertools.chain.from_iterable(
        torch.randperm(len(batches), generator=generator).tolist() for _ in itertools.count())
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    teacher.eval()
    student.eval()
    losses = []
    with _grad_enabled(student):
        for step, index in zip(range(steps), order):
            batch = batches[index]
            with torch.no_grad():
                target = teacher(**batch)
            loss = _distill_loss(target, student(**batch), batch.get("attention_mask"))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if tick:
                tick(step + 1, steps)
    window = max(1, steps // 10)
    return sum(losses[:window]) / window, sum(losses[-window:]) / window


def _distill_loss(target: object, output: object, attention_mask: torch.Tensor | None) -> torch.Tensor:
    logits = getattr(target, "logits", None)
    if logits is not None:  # KL per input (a classifier) or per real token (a language model), averaged
        kl = nn.functional.kl_div(output.logits.log_softmax(-1), logits.log_softmax(-1), log_target=True,
                                  reduction="none").sum(-1)
        if kl.dim() == 2:
            kl = kl[token_mask({"attention_mask": attention_mask} if attention_mask is not None else {}, kl)]
        return kl.mean()
    tokens = token_mask({"attention_mask": attention_mask} if attention_mask is not None else {}, target[0])
    return nn.functional.mse_loss(output[0][tokens], target[0][tokens])


@contextlib.contextmanager
def _grad_enabled(model: nn.Module) -> Iterator[None]:
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)

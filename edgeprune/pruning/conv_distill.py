"""Recovery of a pruned CNN by distillation from the dense model, on unlabeled images.

Retraining-free recovery (``conv_recover``) cannot bring a phone-class CNN back at 1.3x and
beyond: EfficientNet-Lite0 kept 0.588 top-1 agreement at 1.3x with its best setting. Training
the pruned model to reproduce the dense model's outputs needs no labels, so a user's own
folder of images (or images synthesized from the dense model, ``data.synthesize``) is enough:

- the loss is the logit KL at a temperature (scaled by T², as in Hinton et al.) plus feature
  matching at a few convolution outputs, where the dense features are read at the channels the
  pruned model kept (each normalized by the dense features' energy, so layers weigh alike);
- strong augmentation (random resized crops, flips, colour jitter, mixup/cutmix) so a few
  hundred images go a long way; the dense model's outputs are computed on the same augmented
  batch, so mixed images need no mixed labels;
- BatchNorm layers keep their statistics (eval mode) while their affine weights train: re-
  estimating statistics on a few dozen images measured worse (see ``conv_recover``);
- every ``check_every`` steps the KL on held-aside images (every 8th, never trained on,
  un-augmented) of a moving average of the weights is compared with the best so far; a check
  that is worse rolls the weights back to the best and halves the learning rate — the held-
  aside guard of the transformer recovery. Checking the last step's weights instead rolled
  back 24 times in 1,686 steps on EfficientNet-Lite0, halving the rate to nothing.

Deterministic under ``seed`` for a step budget. A time budget (``minutes``) stops at the
first step past it, so how many steps run depends on the machine's speed; the report says
which budget ended the run.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import PlanError
from edgeprune.models.conv import ChannelGraph
from edgeprune.pruning.conv_recover import first_output

Tick = Callable[[int, int], None]

HOLD_EVERY = 8
"""Every 8th image is held aside for the guard and never trained on."""
MIN_IMAGES = 16


@dataclass(frozen=True)
class DistillOptions:
    """How long and how a pruned CNN is distilled; the defaults are what benchmarks/cnn.py measured on
    EfficientNet-Lite0 with 84 images."""

    steps: int = 2000
    """Most optimizer steps; the schedule spans them unless ``minutes`` ends the run sooner."""
    minutes: float | None = 10.0
    """Wall-clock budget (None: only ``steps``)."""
    batch_size: int = 16
    lr: float = 1e-3
    """Chosen on EfficientNet-Lite0 at 75% of MACs by 3-minute runs, compared on the held-aside calibration images:
    KL 2.17 at 1e-3 vs 2.45 at 3e-4 (from 3.40); without feature matching 2.78 and 2.22 — runs this short are noisy
    (±0.3), so these are a reasonable choice, not an optimum."""
    temperature: float = 2.0
    feature_weight: float = 1.0
    """Weight of the feature-matching term (0 = logits only)."""
    feature_layers: int = 3
    resolution: int | None = None
    """Side of the training crops (None: the images' own size). Smaller is faster per step."""
    mix: float = 0.5
    """Share of batches mixed (mixup and cutmix alternating)."""
    check_every: int = 50
    ema: float = 0.99
    """Decay of an exponential moving average of the weights, which the held-aside guard checks and keeps instead of
    the weights of the last step (0: no average). On EfficientNet-Lite0 (Fisher, 0.65 of the MACs, 4-minute runs on
    63 calibration images, judged on 21 others) the KL was 2.17 with 0.99, 2.46 with 0.998 and 2.37 without (one
    run each): the average smooths the step-to-step noise that made the guard roll back and halve the rate."""
    dropout: bool = False
    """Keep the model's dropout and drop-connect active while distilling (off: every step sees the whole
    network, as the deployed model does)."""
    start: str | None = None
    """``bn``: begin from BatchNorm statistics re-estimated on the training images (never the held-aside ones), the
    best retraining-free start for Fisher-allocated channels; ``lstsq``: from a least-squares re-fit of the readers on
    them; ``none``: from the sliced weights. None: ``bn`` for real images, ``none`` for synthesized ones
    (``starting``)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.start not in (None, "lstsq", "bn", "none"):
            raise PlanError(f"unknown distillation start '{self.start}'", "use lstsq, bn or none")
        for name in ("steps", "batch_size", "check_every", "feature_layers"):
            if getattr(self, name) < (0 if name == "feature_layers" else 1):
                raise PlanError(f"distillation {name} {getattr(self, name)} is not positive", f"pass a larger {name}")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise PlanError(f"--distill-minutes {self.minutes} is not a positive number", "pass minutes such as 10")
        if not 0.0 <= self.ema < 1.0:
            raise PlanError(f"weight average decay {self.ema} is outside [0, 1)", "pass a decay such as 0.99")
        if not 0.0 <= self.mix <= 1.0:
            raise PlanError(f"mix share {self.mix} is outside [0, 1]", "pass a share such as 0.5")


    def starting(self, synthesized: bool) -> str:
        """The start for real or ``synthesized`` images. Synthesized images only approximate the statistics the dense
        model's BatchNorms hold: re-estimated on them, EfficientNet-Lite0's held-aside KL began at 5.7 instead of 1.15
        and ten minutes of distillation ended at 0.024 top-1 agreement (benchmarks/cnn.py)."""
        return self.start or ("none" if synthesized else "bn")


DISTILL_DEFAULTS = DistillOptions()


@dataclass
class DistillReport:
    steps: int
    seconds: float
    stopped_by: str
    """``steps`` or ``minutes``."""
    images: int
    held_aside: int
    held_kl_before: float
    held_kl_after: float
    held_agreement_before: float
    held_agreement_after: float
    rollbacks: int
    loss_first_last: tuple[float, float]

    def to_dict(self) -> dict[str, object]:
        return {"method": "distill", **asdict(self)}


def split_held_aside(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(training images, held-aside images): every ``HOLD_EVERY``-th image is held aside."""
    if len(images) < MIN_IMAGES:
        raise PlanError(f"distillation needs at least {MIN_IMAGES} images, got {len(images)}",
                        "pass a folder with more images, or synthesize them (--data-free)")
    held = torch.arange(len(images)) % HOLD_EVERY == HOLD_EVERY - 1
    return images[~held], images[held]


def distill_channels(dense: nn.Module, pruned: nn.Module, graph: ChannelGraph, keep: torch.Tensor,
                     images: torch.Tensor, options: DistillOptions = DISTILL_DEFAULTS,
                     tick: Tick | None = None) -> DistillReport:
    """Train ``pruned`` (in place) towards ``dense`` on augmented ``images`` (N, C, H, W, normalized as the model
    expects); ``dense`` is not changed. ``graph``/``keep`` map the pruned model's channels to the dense ones."""
    train, held = split_held_aside(images)
    layers = feature_layers(graph, options.feature_layers)
    kept = {name: graph.kept_positions(name, "out", keep) for name in layers}
    dense.eval()
    generator = torch.Generator().manual_seed(options.seed)
    optimizer = torch.optim.AdamW([p for p in pruned.parameters() if p.requires_grad], lr=options.lr,
                                  weight_decay=0.0)
    before = held_aside_fit(dense, pruned, held)
    best_kl, best_state, rollbacks, losses = before[0], copy.deepcopy(pruned.state_dict()), 0, []
    start, planned, step, stopped_by = time.perf_counter(), options.steps, 0, "steps"
    average = _average(pruned, options.ema) if options.ema else None
    with torch.random.fork_rng(), _frozen_batchnorm(pruned, options.dropout):
        torch.manual_seed(options.seed)  # dropout / drop-connect inside the model
        while step < planned:
            batch = augment(train[torch.randint(len(train), (options.batch_size,), generator=generator)],
                            generator, options.resolution, options.mix)
            loss = _step(dense, pruned, batch, layers, kept, options)
            for group in optimizer.param_groups:
                group["lr"] = group.get("base_lr", options.lr) * 0.5 * (1 + math.cos(math.pi * step / planned))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update_parameters(pruned)
            losses.append(float(loss.detach()))
            step += 1
            elapsed = time.perf_counter() - start
            if options.minutes is not None and step in (3, 10, 30, 100):  # the schedule spans what the time allows
                planned = max(step + 1, min(options.steps, int(options.minutes * 60 * step / elapsed)))
            if options.minutes is not None and elapsed >= options.minutes * 60:
                stopped_by = "minutes"
            if step % options.check_every == 0 or step >= planned or stopped_by == "minutes":
                checked = pruned if average is None else average.module
                checked.eval()
                kl = held_aside_fit(dense, checked, held)[0]
                _train_mode(pruned, options.dropout)
                if kl <= best_kl:
                    best_kl, best_state = kl, copy.deepcopy(checked.state_dict())
                else:
                    pruned.load_state_dict(best_state)
                    if average is not None:
                        average = _average(pruned, options.ema)
                    rollbacks += 1
                    for group in optimizer.param_groups:
                        group["base_lr"] = group.get("base_lr", options.lr) * 0.5
            if tick is not None:
                tick(step, planned)
            if stopped_by == "minutes":
                break
    pruned.load_state_dict(best_state)
    pruned.eval()
    after = held_aside_fit(dense, pruned, held)
    return DistillReport(steps=step, seconds=round(time.perf_counter() - start, 1), stopped_by=stopped_by,
                         images=len(train), held_aside=len(held), held_kl_before=round(before[0], 5),
                         held_kl_after=round(after[0], 5), held_agreement_before=round(before[1], 4),
                         held_agreement_after=round(after[1], 4), rollbacks=rollbacks,
                         loss_first_last=(round(losses[0], 5), round(losses[-1], 5)) if losses else (0.0, 0.0))


def _average(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights (BatchNorm buffers copied: they are frozen)."""
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=False)


def feature_layers(graph: ChannelGraph, count: int) -> list[str]:
    """``count`` convolutions whose outputs are matched, evenly spaced in forward order and ending at the last one
    that writes prunable channels (the deepest features decide the logits)."""
    writers = sorted((m for (m, role), ids in graph.slots.items() if role == "out" and bool((ids >= 0).any())),
                     key=graph.order.__getitem__)
    if count == 0 or not writers:
        return []
    picks = {writers[max(0, round((i + 1) * len(writers) / count) - 1)] for i in range(count)}
    return sorted(picks, key=graph.order.__getitem__)


def _step(dense: nn.Module, pruned: nn.Module, batch: torch.Tensor, layers: Sequence[str],
          kept: dict[str, torch.Tensor], options: DistillOptions) -> torch.Tensor:
    with torch.no_grad(), _outputs(dense, layers) as dense_features:
        target = first_output(dense(batch))
    with _outputs(pruned, layers) as features:
        logits = first_output(pruned(batch))
    t = options.temperature
    loss = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(target / t, dim=1), reduction="batchmean",
                    log_target=True) * t * t
    if options.feature_weight and layers:
        matched = sum(F.mse_loss(features[name], dense_features[name][:, kept[name]])
                      / dense_features[name][:, kept[name]].pow(2).mean().clamp(min=1e-8) for name in layers)
        loss = loss + options.feature_weight * matched / len(layers)
    return loss


@contextmanager
def _outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    seen: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda _m, _a, out, n=n: seen.__setitem__(n, out)) for n in names]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _frozen_batchnorm(model: nn.Module, dropout: bool) -> Iterator[None]:
    """The model trains with every BatchNorm's running statistics kept; eval mode again afterwards."""
    _train_mode(model, dropout)
    try:
        yield
    finally:
        model.eval()


def _train_mode(model: nn.Module, dropout: bool) -> None:
    """Train mode for dropout / drop-connect when ``dropout``, else eval mode throughout; BatchNorm always eval."""
    model.train(dropout)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@torch.no_grad()
def held_aside_fit(dense: nn.Module, pruned: nn.Module, images: torch.Tensor, batch: int = 32) -> tuple[float, float]:
    """(mean KL(dense ‖ pruned) per image at temperature 1, top-1 agreement) on ``images``."""
    kl = agree = 0.0
    for chunk in images.split(batch):
        target, logits = first_output(dense(chunk)), first_output(pruned(chunk))
        kl += float(F.kl_div(F.log_softmax(logits, 1), F.log_softmax(target, 1), reduction="sum", log_target=True))
        agree += float((logits.argmax(1) == target.argmax(1)).sum())
    return kl / len(images), agree / len(images)


def augment(batch: torch.Tensor, generator: torch.Generator, resolution: int | None = None,
            mix: float = 0.5) -> torch.Tensor:
    """Random resized crops (8–100% of the area, aspect 3/4–4/3) to ``resolution``, horizontal flips, colour jitter
    (brightness, contrast, saturation, in the normalized space) and, for a ``mix`` share of batches, mixup or cutmix
    with a shuffled copy of the batch."""
    n, _, h, w = batch.shape
    size = resolution or h
    r = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    crops = []
    for image in batch:
        area = h * w * (0.08 + 0.92 * float(r(1)))
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(r(1)))
        ch = min(h, max(8, round(math.sqrt(area / aspect))))
        cw = min(w, max(8, round(math.sqrt(area * aspect))))
        top, left = int(r(1) * (h - ch + 1)), int(r(1) * (w - cw + 1))
        crop = image[:, top:top + ch, left:left + cw].unsqueeze(0)
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
        crops.append(crop.flip(-1) if float(r(1)) < 0.5 else crop)
    out = torch.stack(crops)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    gray = out.mean(dim=1, keepdim=True)
    saturation, contrast = 0.6 + 0.8 * r(n, 1, 1, 1), 0.6 + 0.8 * r(n, 1, 1, 1)
    brightness = (r(n, 1, 1, 1) - 0.5) * 0.8
    out = gray + (out - gray) * saturation
    out = mean + (out - mean) * contrast + brightness
    if float(r(1)) < mix:
        other = out[torch.randperm(n, generator=generator)]
        if float(r(1)) < 0.5:
            lam = float(r(1))
            out = lam * out + (1 - lam) * other
        else:
            side = int(size * math.sqrt(float(r(1))))
            top, left = int(r(1) * (size - side + 1)), int(r(1) * (size - side + 1))
            out = out.clone()
            out[:, :, top:top + side, left:left + side] = other[:, :, top:top + side, left:left + side]
    return out

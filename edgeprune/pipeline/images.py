"""Pruning an image model end to end: the ``edgeprune prune`` of a CNN, and its Python API.

``prune_image_model`` builds the model the user named (``models.image``), reads their folder of
images (every 4th held out for evaluation, never used to prune or distill; the rest calibrate
and train), or synthesizes images from the model's BatchNorm statistics when there are none,
prunes channels (``pruning.channels``; recovery by distillation by default), exports the result
parity-checked, and writes one directory atomically:

- ``model.onnx`` — the pruned model, dynamic batch;
- ``model.safetensors`` + ``channel_plan.json`` — the PyTorch weights and the plan that rebuilds
  the architecture from the dense model (``load_pruned_image``), no pickle;
- ``report.json`` — kept MACs, recovery figures, and on the held-out images the top-1 agreement
  with the dense model (and top-1 accuracy of both when labels are given).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from edgeprune.budgets import Budget, check, passed
from edgeprune.data.images import image_paths, open_images, preprocess_image, read_labels
from edgeprune.data.synthesize import SynthesisOptions, synthesize_images
from edgeprune.devices import detect_host
from edgeprune.errors import BadArgumentError, EdgepruneError
from edgeprune.exporting import export_module
from edgeprune.files import atomic_write_json, staged_dir
from edgeprune.models.conv import channel_graph, layer_macs
from edgeprune.models.image import ImageModel, load_image_model
from edgeprune.options import check_percentile, check_positive
from edgeprune.pipeline import Stage, _silent
from edgeprune.pruning import LOSS_ESTIMATES
from edgeprune.pruning.channel_latency import LatencyAllocation, allocate_measured
from edgeprune.pruning.channels import (
    CHANNEL_RECOVERY,
    ChannelPlan,
    apply_channel_plan,
    channel_multiple,
    channel_scores,
    prune_channels,
    self_label_loss,
)
from edgeprune.pruning.conv_distill import DistillOptions
from edgeprune.quantization import quantize
from edgeprune.search.channel_table import measure_channel_table, pruned_timer

PLAN_FILE, WEIGHTS_FILE, SETTINGS_FILE = "channel_plan.json", "model.safetensors", "image_model.json"
CNN_CRITERIA = ("magnitude", "activation", "taylor", "fisher")
EVALUATE_EVERY = 4
"""Every 4th image is held out for evaluation (as for text models' calibration folders)."""


@dataclass(frozen=True)
class ImagePruneSettings:
    """What ``edgeprune prune MODEL`` does with an image model; checked before any work."""

    model: str
    """``package.module:function`` or ``efficientnet-lite0``."""
    keep_flops: float = 0.75
    input_size: int = 224
    images: str | None = None
    """Folder of unlabeled images (any count); every 4th is held out for evaluation."""
    labels: str | None = None
    """CSV (filename,class_index) for top-1 accuracy on the held-out images."""
    data_free: bool = False
    """Calibrate and distill on images synthesized from the model's BatchNorm statistics instead of ``images``."""
    criterion: str | None = None
    """None: ``fisher`` when there are images to score on (``images`` or ``data_free``), else ``magnitude``."""
    allocation: str | None = None
    """None: ``global`` for criteria whose scores compare across layers (taylor, fisher), else ``uniform``. On
    EfficientNet-Lite0 at ~1.5x, Fisher + global kept 0.655 top-1 agreement where magnitude + uniform kept 0.333 at
    1.39x (BatchNorm re-estimated on and judged on the 84 calibration images), and distilled to a lower KL on images
    kept out of the distillation (2.37 vs 2.57, 4-minute runs)."""
    recover: str = "distill"
    multiple: int | None = None
    """Kept channels per space rounded up to this (None: the host ISA's, see ``channel_multiple``)."""
    distill: DistillOptions = field(default_factory=DistillOptions)
    synthesis: SynthesisOptions = field(default_factory=SynthesisOptions)
    batch_size: int = 8
    seed: int = 0
    latency_ms: float | None = None
    """``optimize_image_model``: the latency budget (ms at ``percentile``, 1 thread, batch 1, on this host); channels
    are then allocated by importance per measured ms (``keep_flops`` is not used)."""
    percentile: str = "p90"

    def __post_init__(self) -> None:
        if self.criterion is None:
            scored = self.images is not None or self.data_free
            object.__setattr__(self, "criterion", "fisher" if scored else "magnitude")
        if self.allocation is None:
            object.__setattr__(self, "allocation", "global" if self.criterion in LOSS_ESTIMATES else "uniform")
        check_percentile(self.percentile)
        check_positive(latency_ms=self.latency_ms)
        if self.criterion not in CNN_CRITERIA:
            raise BadArgumentError(f"--criterion {self.criterion} does not apply to image models",
                                   f"choose one of: {', '.join(CNN_CRITERIA)}")
        if self.recover not in CHANNEL_RECOVERY:
            raise BadArgumentError(f"--recover {self.recover} does not apply to image models",
                                   f"choose one of: {', '.join(CHANNEL_RECOVERY)}")
        if self.allocation not in ("uniform", "global"):
            raise BadArgumentError(f"unknown --allocation '{self.allocation}'", "choose uniform or global")
        if not 0.0 < self.keep_flops <= 1.0:
            raise BadArgumentError(f"--keep-flops {self.keep_flops} is outside (0, 1]", "pass a fraction such as 0.75")
        if self.input_size < 16:
            raise BadArgumentError(f"--input-size {self.input_size} is too small", "pass the model's input side")
        if self.images is None and not self.data_free and (self.recover != "none" or self.criterion != "magnitude"):
            raise BadArgumentError(f"--recover {self.recover} / --criterion {self.criterion} need images",
                                   "pass --images DIR, or --data-free to synthesize them from the model")
        if self.labels is not None and self.images is None:
            raise BadArgumentError("--labels needs --images (the labels name its files)", "pass --images DIR")


@dataclass
class ImagePruneResult:
    out_dir: Path
    plan: ChannelPlan
    report: dict[str, object]


def prune_image_model(settings: ImagePruneSettings, out_dir: Path | str, stage: Stage | None = None,
                      ) -> ImagePruneResult:
    """Prune, recover, export and evaluate the image model ``settings.model`` into ``out_dir`` (written atomically;
    refused before any work when it would overwrite an input)."""
    return _run(settings, out_dir, stage or _silent, optimize=False)


def optimize_image_model(settings: ImagePruneSettings, out_dir: Path | str, stage: Stage | None = None,
                         ) -> ImagePruneResult:
    """``prune_image_model`` within ``settings.latency_ms``: a channel latency table measured here, channels allocated
    by importance per measured ms, then the never-slower quantization (``quantization.quantize``, calibrated on the
    images) and the budget checked by measuring the result; ``report["verdicts"]`` and ``report["passed"]``."""
    if settings.latency_ms is None:
        raise BadArgumentError("optimizing an image model needs a latency budget", "pass --latency-ms")
    return _run(settings, out_dir, stage or _silent, optimize=True)


def _run(settings: ImagePruneSettings, out_dir: Path | str, stage: Stage, optimize: bool) -> ImagePruneResult:
    out_dir = Path(out_dir)
    inputs = [Path(p) for p in (settings.images, settings.labels) if p is not None]
    with staged_dir(out_dir, inputs) as staging:
        start = time.perf_counter()
        with stage("Loading the model and images"):
            dense = load_image_model(settings.model, settings.input_size)
            calibration, held_out, labels = _read(settings)
        if settings.data_free:
            with stage(f"Synthesizing {settings.synthesis.count} images from BatchNorm statistics") as tick:
                synthesis_start = time.perf_counter()
                calibration = synthesize_images(dense.module, settings.synthesis, tick).images
                synthesis_seconds = time.perf_counter() - synthesis_start
        example = held_out if held_out is not None else torch.randn(
            8, 3, settings.input_size, settings.input_size, generator=torch.Generator().manual_seed(settings.seed))
        multiple = settings.multiple or channel_multiple(detect_host().cpu.isa)
        graph = channel_graph(dense.module, example[:1])
        batches = None if calibration is None else list(calibration.split(settings.batch_size))
        loss = self_label_loss if settings.criterion in LOSS_ESTIMATES else None
        target: dict[str, object] = {"keep_flops": settings.keep_flops}
        if optimize:
            scores = channel_scores(dense.module, graph, settings.criterion, batches, loss=loss, seed=settings.seed)
            with stage("Timing the channel latency table") as tick:
                table = measure_channel_table(dense.module, example[:8], graph, staging / "table", multiple=multiple,
                                              tick=tick)
            with stage("Timing the allocation whole (the table's costs do not quite add)"):
                timer = pruned_timer(dense.module, example[:8], graph, table, staging / "table")
                keep, attempts = allocate_measured(graph, scores, table, settings.latency_ms, timer,
                                                   LatencyAllocation(multiple, comparable=loss is not None))
            target = {"keep": keep}
        with stage("Pruning" + ("" if settings.recover == "none" else f" and recovering ({settings.recover})")) as tick:
            pruned, plan = prune_channels(
                dense.module, example[:1], criterion=settings.criterion, batches=batches,
                allocation=settings.allocation, multiple=multiple, recovery=settings.recover, loss=loss,
                seed=settings.seed, tick=tick, **target,
                distill=replace(settings.distill, start=settings.distill.starting(synthesized=settings.data_free)))
        with stage("Exporting to ONNX (parity-checked)"):
            fp32 = export_module(pruned, staging / "model.onnx", example[:8]).onnx_path
        report: dict[str, object] = {
            "model": settings.model, "input_size": settings.input_size,
            "kept_macs_fraction": round(layer_macs(pruned, channel_graph(pruned, example[:1]))
                                        / layer_macs(dense.module, graph), 4),
            "channel_multiple": multiple, "recovery": plan.recovery,
            "calibration": ("synthesized" if settings.data_free else settings.images),
            "calibration_images": 0 if calibration is None else len(calibration),
            "evaluation": _evaluate(dense.module, pruned, held_out, labels),
            "settings": json.loads(json.dumps(asdict(settings), default=str)),
        }
        if settings.data_free:
            report["synthesis_seconds"] = round(synthesis_seconds, 1)
        if optimize:
            report["latency_table"] = table.to_dict()
            report["allocation_attempts"] = [a.to_dict() for a in attempts]
            report["predicted_ms"] = round(table.predict(
                {s.name: len(k) for s, k in zip(graph.spaces, plan.spaces.values())}), 4)
            shutil.rmtree(staging / "table")
            real = calibration if calibration is not None and not settings.data_free else example
            feeds = [{"input": b.numpy()} for b in real.split(1)[:32]]
            with stage("Quantizing (the fastest form that keeps quality; fp32 when none is faster)"):
                quantized = quantize(fp32, staging / "quantized", "host", calibration=feeds)
            with stage("Measuring against the budget"):
                budget = Budget(latency_ms=settings.latency_ms, percentile=settings.percentile)
                lines, _ = check(quantized.onnx_path, "host", budget, threads=1)
            report["quantized"] = {"form": quantized.chosen, "p50_ms": quantized.p50_ms, "notes": quantized.notes}
            report["verdicts"] = [line.to_dict() for line in lines]
            report["passed"] = passed(lines)
        report["seconds"] = round(time.perf_counter() - start, 1)
        plan.save(staging / PLAN_FILE)
        safetensors.torch.save_file({k: v.contiguous() for k, v in pruned.state_dict().items()},
                                    str(staging / WEIGHTS_FILE))
        atomic_write_json(staging / SETTINGS_FILE, {"model": settings.model, "input_size": settings.input_size})
        atomic_write_json(staging / "report.json", report)
    return ImagePruneResult(out_dir, plan, report)


def load_pruned_image(folder: Path | str) -> ImageModel:
    """The pruned model ``prune_image_model`` wrote: the dense model rebuilt, sliced by the plan, weights loaded."""
    folder = Path(folder)
    try:
        spec = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgepruneError(f"'{folder}' holds no pruned image model ({exc})",
                             "pass a directory written by edgeprune prune") from None
    dense = load_image_model(spec["model"], spec["input_size"])
    example = torch.zeros(1, 3, spec["input_size"], spec["input_size"])
    model = apply_channel_plan(dense.module, example, ChannelPlan.load(folder / PLAN_FILE))
    model.load_state_dict(safetensors.torch.load_file(str(folder / WEIGHTS_FILE)))
    return ImageModel(model.eval(), spec["model"], spec["input_size"])


def _read(settings: ImagePruneSettings) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(calibration images, held-out images, held-out labels), each None when not given."""
    if settings.images is None:
        return None, None, None
    paths = image_paths(settings.images)
    resize = round(settings.input_size * 256 / 224)
    tensors = torch.stack([preprocess_image(image, resize, settings.input_size) for image in open_images(paths)])
    held = torch.arange(len(paths)) % EVALUATE_EVERY == EVALUATE_EVERY - 1
    if not bool(held.any()):
        raise BadArgumentError(f"'{settings.images}' holds {len(paths)} image(s): none is left to evaluate on",
                               f"pass at least {EVALUATE_EVERY} images")
    labels = None
    if settings.labels is not None:
        table = read_labels(settings.labels)
        missing = [p.name for p in paths if p.name not in table]
        if missing:
            raise BadArgumentError(f"{len(missing)} image(s) have no label in '{settings.labels}', e.g. {missing[0]}",
                                   "label every image, or leave out --labels")
        labels = torch.tensor([table[p.name] for p, h in zip(paths, held.tolist()) if h])
    return tensors[~held], tensors[held], labels


@torch.no_grad()
def _evaluate(dense: nn.Module, pruned: nn.Module, images: torch.Tensor | None,
              labels: torch.Tensor | None) -> dict[str, object]:
    if images is None:
        return {"held_out_images": 0, "note": "no images were given: nothing to evaluate on"}
    expected = torch.cat([dense(b) for b in images.split(32)]).argmax(1)
    predicted = torch.cat([pruned(b) for b in images.split(32)]).argmax(1)
    result: dict[str, object] = {"held_out_images": len(images),
                                 "top1_agreement": round(float((predicted == expected).float().mean()), 4)}
    if labels is not None:
        result["top1"] = round(float((predicted == labels).float().mean()), 4)
        result["dense_top1"] = round(float((expected == labels).float().mean()), 4)
    return result


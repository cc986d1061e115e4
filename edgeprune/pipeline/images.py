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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from edgeprune.data.images import image_paths, preprocess_image, read_images, read_labels
from edgeprune.data.synthesize import SynthesisOptions, synthesize_images
from edgeprune.devices import detect_host
from edgeprune.errors import BadArgumentError, EdgepruneError
from edgeprune.exporting import export_module
from edgeprune.files import atomic_write_json, staged_dir
from edgeprune.models.conv import channel_graph, layer_macs
from edgeprune.models.image import ImageModel, load_image_model
from edgeprune.pipeline import Stage, _silent
from edgeprune.pruning.channels import (
    CHANNEL_RECOVERY,
    ChannelPlan,
    apply_channel_plan,
    channel_multiple,
    prune_channels,
    self_label_loss,
)
from edgeprune.pruning.conv_distill import DistillOptions

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
    criterion: str = "magnitude"
    allocation: str = "uniform"
    recover: str = "distill"
    multiple: int | None = None
    """Kept channels per space rounded up to this (None: the host ISA's, see ``channel_multiple``)."""
    distill: DistillOptions = field(default_factory=DistillOptions)
    synthesis: SynthesisOptions = field(default_factory=SynthesisOptions)
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
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
    stage = stage or _silent
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
        example = (held_out if held_out is not None else calibration if calibration is not None else
                   torch.randn(2, 3, settings.input_size, settings.input_size,
                               generator=torch.Generator().manual_seed(settings.seed)))
        multiple = settings.multiple or channel_multiple(detect_host().cpu.isa)
        with stage("Pruning" + ("" if settings.recover == "none" else f" and recovering ({settings.recover})")) as tick:
            batches = None if calibration is None else list(calibration.split(settings.batch_size))
            pruned, plan = prune_channels(
                dense.module, example[:1], keep_flops=settings.keep_flops, criterion=settings.criterion,
                batches=batches, allocation=settings.allocation, multiple=multiple, recovery=settings.recover,
                loss=self_label_loss if settings.criterion in ("taylor", "fisher") else None, seed=settings.seed,
                distill=settings.distill, tick=tick)
        with stage("Exporting to ONNX (parity-checked)"):
            export_module(pruned, staging / "model.onnx", example[:8])
        graph = channel_graph(dense.module, example[:1])
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
    tensors = torch.stack([preprocess_image(image, resize, settings.input_size)
                           for image in read_images(settings.images)])
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


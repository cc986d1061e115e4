"""PyTorch → ONNX with dynamic batch and sequence axes, verified against PyTorch on real text.

The export goes through optimum's exporter, so the output directory (model.onnx, config,
tokenizer) loads with optimum's ``ORTModelFor...`` classes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprune import runtime
from edgeprune.data import sample_sentences
from edgeprune.data.images import synthetic_images
from edgeprune.data.inputs import model_inputs
from edgeprune.data.text import as_torch
from edgeprune.errors import ExportError
from edgeprune.files import staged_dir
from edgeprune.models.base import IMAGE
from edgeprune.models.loading import (
    SENTENCE_TRANSFORMERS_FILES,
    TOKENIZER_FILES,
    LoadedModel,
    copy_model_files,
    drop_remote_code,
    load_model,
)
from edgeprune.models.plan import PLAN_FILE
from edgeprune.quiet import quiet

ONNX_FILE = "model.onnx"
DEFAULT_ATOL = 1e-4
WITH_PAST = "-with-past"
"""optimum's task suffix for a decoder exported with its key/value cache (past in, present out)."""
DECODE_STEPS = 8
DECODER_ATOL = 1e-3
"""A decoder's parity tolerance (× the largest |logit|): logits over a 49k vocabulary after 30 fp32 layers differ more
than an encoder's pooled states. SmolLM2-135M: dense 1.5e-4 absolute (4e-6 of the largest logit); pruned to 2 of 3 KV
groups and 3/4 of the MLP without recovery, up to 0.011 (2.8e-4), already at the prefill, so not the cache."""
"""Max abs difference allowed between PyTorch and ONNX outputs, per unit of the largest output magnitude
(fp32 rounding grows with the values: MiniLM's states reach ~6, its exports differ by ~4e-6 to 1.2e-4)."""


@dataclass
class ExportResult:
    onnx_path: Path
    max_abs_diff: float
    """Largest |PyTorch − ONNX| over the non-padding positions of the parity texts."""
    parity_texts: int
    """How many inputs (texts or images) parity was checked on."""
    task: str
    parity_inputs: str = "real"
    """What parity ran on: ``real`` (given) inputs, the ``built-in sentences``, or ``synthetic images``."""
    decode_steps: int = 0
    """A decoder exported with its key/value cache: greedy steps after the prefill checked against PyTorch."""


def export(model: LoadedModel | Path | str | None, out_dir: Path | str, *, inputs: list[object] | None = None,
           atol: float | None = None, opset: int | None = None) -> ExportResult:
    """Export ``model`` to ``out_dir/model.onnx`` and check it against PyTorch on real ``inputs``.

    ``model`` is a loaded model or a directory (None = the packaged default model). ``inputs``
    are texts or images, as the model reads; by default the built-in parity sentences for a text
    model and, for an image model, synthetic images (``ExportResult.parity_inputs`` says so: pass
    real images where you have them). An image model's input is pinned to its configured size,
    which is the only size its position embeddings accept.

    Raises ``ExportError`` (and writes nothing) when the outputs differ by more than
    ``atol`` × max(1, largest |output|); ``atol`` defaults to ``DEFAULT_ATOL``, ``DECODER_ATOL`` for a decoder.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    kind = "real"
    if inputs is None:
        inputs, kind = (sample_sentences(), "built-in sentences") if loaded.modality != IMAGE else (
            synthetic_images(8, loaded.model.config.image_size), "synthetic images")
    out_dir = Path(out_dir)
    with staged_dir(out_dir, inputs=[loaded.path]) as tmp:
        _optimum_export(loaded, tmp, opset)
        if loaded.modality == IMAGE:
            _pin_image_size(tmp / ONNX_FILE, loaded.model.config)
        if not any((tmp / name).is_file() for name in TOKENIZER_FILES + ("preprocessor_config.json",)):
            loaded.processor.save_pretrained(tmp)  # optimum leaves out some (a GGUF model's tokenizer)
        copy_model_files(loaded.path, tmp, SENTENCE_TRANSFORMERS_FILES)
        drop_remote_code(tmp / "config.json")
        if loaded.plan is not None:
            loaded.plan.save(tmp / PLAN_FILE)
        steps = DECODE_STEPS if loaded.task.endswith(WITH_PAST) else 0
        diff, scale = decode_parity(loaded, tmp / ONNX_FILE, inputs, steps) if steps else parity(
            loaded, tmp / ONNX_FILE, inputs)
        atol = atol if atol is not None else DECODER_ATOL if steps else DEFAULT_ATOL
        check_parity(diff, scale, atol, "report this model; try another --opset, or a larger --atol when the "
                                        "difference is only numerical")
    return ExportResult(onnx_path=out_dir / ONNX_FILE, max_abs_diff=diff, parity_texts=len(inputs),
                        task=loaded.task, parity_inputs=kind, decode_steps=steps)


def export_module(module: torch.nn.Module, out_path: Path | str, inputs: torch.Tensor, *,
                  atol: float = DEFAULT_ATOL, opset: int = 17) -> ExportResult:
    """Export a tensor-in, tensor-out ``nn.Module`` (a CNN, an encoder) with a dynamic batch axis,
    checked against PyTorch on ``inputs`` (real images, not noise: parity on noise proves little).

    Raises ``ExportError`` (and writes nothing) when outputs differ by more than ``atol`` ×
    max(1, largest |output|).
    """
    out_path = Path(out_path)
    if out_path.exists():
        raise ExportError(f"'{out_path}' already exists", "choose a new file name; edgeprune never overwrites")
    module = module.eval()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    try:
        with quiet(), torch.no_grad():
            torch.onnx.export(module, (inputs[:1],), str(partial), input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
        with torch.no_grad():
            expected = module(inputs)
        expected = (expected[0] if isinstance(expected, (tuple, list)) else expected).numpy()
        sess = runtime.session(partial)
        actual = sess.run(None, {sess.get_inputs()[0].name: inputs.numpy()})[0]
        diff, scale = float(np.abs(actual - expected).max()), float(np.abs(expected).max())
        check_parity(diff, scale, atol, "report this model; try another opset")
        partial.replace(out_path)
    except torch.onnx.errors.OnnxExporterError as exc:  # an operator or pattern the exporter cannot express
        raise ExportError(f"ONNX export failed ({type(exc).__name__}: {str(exc)[:300]})",
                          "check that the model runs in PyTorch on these inputs") from exc
    finally:
        partial.unlink(missing_ok=True)
    return ExportResult(onnx_path=out_path, max_abs_diff=diff, parity_texts=len(inputs), task="tensor")


def check_parity(diff: float, scale: float, atol: float, fix: str) -> None:
    """Refuse an export whose outputs differ from PyTorch by more than ``atol`` × max(1, largest |output|)."""
    if not diff <= atol * max(1.0, scale):
        raise ExportError(f"ONNX outputs differ from PyTorch by {diff:.3g} (tolerance {atol:g} x max(1, "
                          f"largest output {scale:.3g}))", fix)


def parity(loaded: LoadedModel, onnx_path: Path, inputs: list[object]) -> tuple[float, float]:
    """Max abs difference between PyTorch and ONNX first outputs and the largest |PyTorch output|, padding excluded."""
    arrays = model_inputs(loaded.processor, inputs)
    with torch.no_grad():
        expected = loaded.model(**as_torch(arrays))[0].numpy()
    sess = runtime.session(onnx_path)
    actual = sess.run(None, runtime.feed(sess, arrays))[0]
    if actual.shape != expected.shape:
        raise ExportError(f"ONNX output shape {actual.shape} differs from PyTorch {expected.shape}",
                          "report this model")
    if expected.ndim == 3 and "attention_mask" in arrays:
        real = arrays["attention_mask"].astype(bool)
        actual, expected = actual[real], expected[real]
    return float(np.abs(actual - expected).max()), float(np.abs(expected).max())


def decode_parity(loaded: LoadedModel, onnx_path: Path, texts: list[object], steps: int) -> tuple[float, float]:
    """Max |PyTorch − ONNX| logits over the prefill of each text and ``steps`` greedy steps after it, the ONNX model
    fed its own ``present`` key/values as the next ``past``, and the largest |PyTorch logit|."""
    sess = runtime.session(onnx_path)
    outputs = [o.name for o in sess.get_outputs()]
    diff = scale = 0.0
    for text in texts:
        ids = np.asarray(loaded.processor(str(text), return_tensors="np")["input_ids"], dtype=np.int64)
        past: dict[str, np.ndarray] = {}  # empty at the prefill (runtime.feed makes it)
        torch_past, length = None, ids.shape[1]
        for _ in range(steps + 1):
            arrays = runtime.step_inputs(ids, length)
            result = sess.run(None, runtime.feed(sess, {**arrays, **past}))
            with torch.no_grad():
                out = loaded.model(**{k: torch.from_numpy(v) for k, v in arrays.items()},
                                   past_key_values=torch_past, use_cache=True)
            expected = out.logits.numpy()
            diff = max(diff, float(np.abs(result[0] - expected).max()))
            scale = max(scale, float(np.abs(expected).max()))
            torch_past = out.past_key_values
            past = runtime.next_cache(outputs, result)
            ids, length = expected[:, -1].argmax(-1)[:, None].astype(np.int64), length + 1
    return diff, scale


def _pin_image_size(onnx_path: Path, config: object) -> None:
    """Fix the channel, height and width axes of ``pixel_values`` to the model's configured image: optimum leaves
    them symbolic, but the position embeddings only fit that size, and timing needs the real shape."""
    import onnx

    graph = onnx.load(str(onnx_path))
    for value in graph.graph.input:
        if value.name == "pixel_values":
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims[1:], (config.num_channels, config.image_size, config.image_size)):
                dim.Clear()
                dim.dim_value = size
    onnx.save(graph, str(onnx_path))


def _optimum_export(loaded: LoadedModel, out: Path, opset: int | None) -> None:
    from optimum.exporters.onnx import onnx_export_from_model

    try:
        with quiet(), _cache_shapes(loaded):
            onnx_export_from_model(loaded.model, out, task=loaded.task, opset=opset, do_validation=False,
                                   preprocessors=[loaded.processor])
    except (ValueError, KeyError, torch.onnx.errors.OnnxExporterError) as exc:
        # what optimum and torch.onnx raise for a model or operator they do not support; anything else is a bug
        raise ExportError(f"ONNX export failed ({type(exc).__name__}: {str(exc)[:300]})",
                          "check that the model runs in PyTorch; report the model if it does") from exc



@contextlib.contextmanager
def _cache_shapes(loaded: LoadedModel) -> Iterator[None]:
    """A pruned decoder's config states its kept key/value heads while it is exported, so the exporter's cache
    inputs and the config.json written beside the model (from which optimum's ``ORTModelForCausalLM`` builds the
    empty cache) have the pruned shape. ``num_attention_heads`` stays dense: runtimes derive the head size from
    ``hidden_size / num_attention_heads``. One count must hold for every layer: a KV cache has one head count."""
    config, plan = loaded.model.config, loaded.plan
    if plan is None or not loaded.task.endswith(WITH_PAST):
        yield
        return
    kept = set(plan.kept_heads)
    if len(kept) != 1:
        raise ExportError(f"layers keep different numbers of key/value groups ({sorted(kept)}), which a KV-cache "
                          "export cannot express", "prune attention uniformly (--allocation uniform)")
    dense = config.num_key_value_heads
    config.num_key_value_heads = kept.pop()
    try:
        yield
    finally:
        config.num_key_value_heads = dense

"""A decoder LLM as the bundle onnxruntime-genai loads (model.onnx + genai_config.json + tokenizer), with one
greedy generation through it compared token by token with PyTorch's.

onnxruntime-genai is ONNX Runtime's generation loop for phones and desktops; its model builder
writes its own graph (fused attention with a shared key/value buffer, int4 MatMulNBits), so the
bundle is built by that builder from a plain Hugging Face checkpoint of the model: a pruned model is
written as one first, which is possible only when every layer has the same shape (the builder and
genai_config.json state one head count and one MLP width for all layers).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeprune.errors import BadArgumentError, ExportError
from edgeprune.files import MARKER, staged_dir
from edgeprune.models import adapter_for
from edgeprune.models.loading import LoadedModel, drop_remote_code, load_model
from edgeprune.quiet import quiet

PRECISIONS = ("int4", "fp32")
"""What the builder makes for the CPU: int4 weights (MatMulNBits, fp32 activations) or fp32."""
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_PROMPT = "The capital of France is"
DEFAULT_NEW_TOKENS = 16
HEAD_SIZE_MULTIPLE = 16
"""onnxruntime's CPU GroupQueryAttention kernel, which every builder graph uses, rejects other head sizes at run
time ("head_size shall be a multiple of 16")."""


@dataclass
class GenerationCheck:
    """One greedy generation from ``prompt`` through onnxruntime-genai and through PyTorch, from the same prompt ids.

    Both stop at ``new_tokens`` or at end-of-sequence, so the shorter list is padded by mismatches when shares are
    computed.
    """

    prompt: str
    prompt_ids: list[int]
    genai_tokens: list[int]
    torch_tokens: list[int]
    text: str
    """The genai continuation decoded by the bundle's own tokenizer: what an app on the device would show."""
    same_prompt_ids: bool
    """Whether the bundle's tokenizer encodes ``prompt`` to PyTorch's ``prompt_ids`` (a different tokenizer would
    make the device read other tokens than the model was checked on)."""

    @property
    def compared(self) -> int:
        return max(len(self.genai_tokens), len(self.torch_tokens))

    @property
    def same_prefix(self) -> int:
        """How many tokens both give before the first difference."""
        same = 0
        for ours, theirs in zip(self.genai_tokens, self.torch_tokens):
            if ours != theirs:
                break
            same += 1
        return same

    @property
    def prefix_agreement(self) -> float:
        """Share of the compared tokens before the first difference: 1.0 is the same text."""
        return self.same_prefix / self.compared if self.compared else 1.0

    @property
    def agreement(self) -> float:
        """Share of positions holding the same token (a difference early shifts everything after it, so this is
        mostly a hint of how much the two texts drift apart)."""
        same = sum(a == b for a, b in zip(self.genai_tokens, self.torch_tokens))
        return same / self.compared if self.compared else 1.0


@dataclass
class GenaiResult:
    """A written bundle: ``out_dir`` holds ``files`` (model.onnx, its external weights, genai_config.json,
    tokenizer), which onnxruntime-genai's ``og.Model(out_dir)`` loads."""

    out_dir: Path
    files: list[str]
    precision: str
    size_mb: float
    """All of ``files``, in MB (10^6 bytes)."""
    check: GenerationCheck


def export_genai(model: LoadedModel | Path | str, out_dir: Path | str, *, precision: str = "int4",
                 prompt: str = DEFAULT_PROMPT, new_tokens: int = DEFAULT_NEW_TOKENS) -> GenaiResult:
    """Write the onnxruntime-genai bundle of a decoder LLM (a loaded model, dense or pruned, or a directory) to
    ``out_dir`` and greedily generate ``new_tokens`` from ``prompt`` through it and through PyTorch.

    The token comparison is reported, not enforced: fp32 gives PyTorch's tokens; int4 rounds the
    weights of every matrix product, and on a real model greedy text drifts after a few tokens.
    Raises ``ExportError`` for a model the builder or runtime cannot take (nothing is written then).
    """
    if new_tokens < 1:
        raise BadArgumentError(f"new_tokens is {new_tokens}", "generate at least one token")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    check_genai_support(loaded, precision)
    out_dir = Path(out_dir)
    with staged_dir(out_dir, inputs=[loaded.path]) as tmp:
        with tempfile.TemporaryDirectory(dir=tmp, prefix=".work-") as work:
            checkpoint = Path(work) / "checkpoint"
            _write_checkpoint(loaded, checkpoint)
            _build(checkpoint, tmp, precision, Path(work) / "cache")
        _byte_level_decoder(tmp / TOKENIZER_FILE)
        check = _generation_check(loaded, tmp, prompt, new_tokens)
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file() and p.name != MARKER)
    return GenaiResult(out_dir=out_dir, precision=precision, check=check, files=files,
                       size_mb=sum((out_dir / name).stat().st_size for name in files) / 1e6)


def check_genai_support(loaded: LoadedModel, precision: str) -> None:
    """Refuse, before any work, what onnxruntime-genai's builder cannot make: a precision it lacks for the CPU, a
    model that is not a causal LM, layers of different shapes, a head size its CPU attention kernel rejects; and say
    how to install the package when it is missing."""
    if precision not in PRECISIONS:
        raise BadArgumentError(f"unknown onnxruntime-genai precision '{precision}'",
                               f"use one of {', '.join(PRECISIONS)} (what its builder makes for the CPU)")
    _genai_module()
    if not loaded.task.endswith("-with-past"):
        raise ExportError(f"onnxruntime-genai runs causal language models; '{loaded.path}' is a {loaded.task} model",
                          "pass a decoder LLM (…ForCausalLM: Llama, Qwen2, Mistral)")
    plan = loaded.plan
    if plan is not None and (len(set(plan.kept_heads)) > 1 or len(set(plan.kept_neurons)) > 1):
        raise ExportError(f"the pruned layers differ in shape (key/value groups {plan.kept_heads}, MLP neurons "
                          f"{plan.kept_neurons}); onnxruntime-genai's builder needs uniform layers (one head count "
                          "and one MLP width for all)", "prune with --allocation uniform")
    head_dim = adapter_for(loaded.model).layers(loaded.model)[0].head_dim
    if head_dim % HEAD_SIZE_MULTIPLE:
        raise ExportError(f"the model's attention head size is {head_dim}; onnxruntime's CPU attention kernel in "
                          f"onnxruntime-genai needs a multiple of {HEAD_SIZE_MULTIPLE}",
                          "use the ONNX export (edgeprune export without --genai) for this model")


def _genai_module() -> object:
    """onnxruntime_genai, imported on first use: it is an optional dependency."""
    try:
        import onnxruntime_genai
    except ImportError:
        raise ExportError("the onnxruntime-genai bundle needs the onnxruntime-genai package",
                          "pip install 'edgeprune[llm]'") from None
    return onnxruntime_genai


def _write_checkpoint(loaded: LoadedModel, folder: Path) -> None:
    """``loaded`` as a plain Hugging Face checkpoint (config, safetensors, tokenizer) that ``from_pretrained`` loads.

    A pruned model's config states its kept sizes: key/value heads, their query heads (``group_size``
    each), the MLP width, and the head size explicitly (it no longer equals hidden size / query heads).
    """
    loaded.model.save_pretrained(folder)
    loaded.processor.save_pretrained(folder)
    config_path = folder / "config.json"
    drop_remote_code(config_path)  # the builder loads with trust_remote_code=True
    plan = loaded.plan
    if plan is None:
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    kept_groups = plan.kept_heads[0]
    config.update(num_key_value_heads=kept_groups, num_attention_heads=kept_groups * plan.dense.group_size,
                  head_dim=plan.dense.head_dim, intermediate_size=plan.kept_neurons[0])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _byte_level_decoder(tokenizer_json: Path) -> None:
    """Give a byte-level BPE tokenizer (GPT-2's kind: SmolLM2's, Qwen2's) the byte-level decoder.

    transformers' GGUF reader turns such a tokenizer into a Llama one with SentencePiece decoders
    (byte fallback, "▁" → " ") over the byte-level pieces; onnxruntime-genai's tokenizer takes those
    decoders for a SentencePiece model and then cannot encode a space. The decoders change nothing
    for a byte-level vocabulary, which has neither "▁" nor byte-fallback pieces.
    """
    if not tokenizer_json.is_file():
        return
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    byte_level = "ByteLevel" in _pre_tokenizer_types(spec.get("pre_tokenizer"))
    if not byte_level or (spec.get("decoder") or {}).get("type") == "ByteLevel":
        return
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


def _pre_tokenizer_types(pre_tokenizer: dict | None) -> set[str]:
    """The type of a pre-tokenizer, and of each part when it is a ``Sequence`` (Qwen2's: split, then byte-level)."""
    if not pre_tokenizer:
        return set()
    return {pre_tokenizer.get("type", ""), *(part.get("type", "") for part in pre_tokenizer.get("pretokenizers", []))}


def _build(checkpoint: Path, out: Path, precision: str, cache: Path) -> None:
    from onnxruntime_genai.models.builder import create_model

    try:  # the builder prints every layer and draws progress bars
        with quiet(), contextlib.redirect_stderr(io.StringIO()):
            create_model(None, str(checkpoint), str(out), precision, "cpu", str(cache), hf_token="false")
    except (NotImplementedError, ValueError, KeyError, AttributeError) as exc:
        # what the builder raises for an architecture or config it does not handle
        raise ExportError(f"onnxruntime-genai's builder failed ({type(exc).__name__}: {str(exc)[:300]})",
                          "check that the model is a Llama, Qwen2 or Mistral causal LM; report it if it is") from exc


def _generation_check(loaded: LoadedModel, bundle: Path, prompt: str, new_tokens: int) -> GenerationCheck:
    """Greedy tokens of the bundle and of PyTorch from the same prompt ids (the model is compared, not the
    tokenizers), with plain greedy search on both sides: no sampling and no repetition penalty from either config."""
    from transformers import GenerationConfig

    og = _genai_module()
    ids = loaded.processor(prompt, return_tensors="pt")["input_ids"]
    try:
        genai_model = og.Model(str(bundle))
        tokenizer = og.Tokenizer(genai_model)
        params = og.GeneratorParams(genai_model)
        params.set_search_options(max_length=ids.shape[1] + new_tokens, do_sample=False, repetition_penalty=1.0)
        generator = og.Generator(genai_model, params)
        generator.append_tokens(ids.numpy())
        produced: list[int] = []
        while not generator.is_done() and len(produced) < new_tokens:
            generator.generate_next_token()
            produced.append(int(generator.get_next_tokens()[0]))
        text = tokenizer.decode(produced)
        same_ids = [int(i) for i in tokenizer.encode(prompt)] == ids[0].tolist()
    except RuntimeError as exc:  # what onnxruntime-genai raises for a bundle it cannot load or run
        raise ExportError(f"onnxruntime-genai cannot run the bundle ({str(exc).strip()[:300]})",
                          "a tokenizer it lacks is the usual cause (it reads BPE and SentencePiece tokenizers such "
                          "as GPT-2's, Llama's and Qwen2's); report the model otherwise") from None
    generation = loaded.model.generation_config
    greedy = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, eos_token_id=generation.eos_token_id,
                              pad_token_id=loaded.processor.pad_token_id)
    with torch.no_grad(), quiet():  # transformers warns that the config differs from the model's defaults
        expected = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=greedy)
    return GenerationCheck(prompt=prompt, prompt_ids=ids[0].tolist(), genai_tokens=produced,
                           torch_tokens=expected[0, ids.shape[1]:].tolist(), text=text, same_prompt_ids=same_ids)

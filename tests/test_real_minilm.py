"""Integration tests on the real packaged all-MiniLM-L6-v2 (22.7M parameters)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeprune import evaluate, load_model, load_pruned, prune, prune_loaded
from edgeprune.cli import app
from edgeprune.options import PruneOptions

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-dev.csv"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("minilm") / "run"
    result = CliRunner().invoke(app, ["optimize", "--out", str(out), "--threads", "1", "--runs", "20",
                                      "--min-speedup", "1.2"])
    manifest = json.loads((out / "run.json").read_text())
    assert result.exit_code == (0 if manifest["passed"] else 1), result.output
    assert "edgeprune optimize" in result.stdout and "budget check" in result.stdout
    return out


def test_optimize_writes_a_complete_manifest(run_dir, minilm_dir) -> None:
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["inputs"]["model"] == str(minilm_dir)
    assert len(manifest["inputs"]["weights_sha256"]["model.safetensors"]) == 64
    assert manifest["settings"]["prune"]["seed"] == 0 and manifest["versions"]["onnxruntime"]
    prune_stage = manifest["stages"]["prune"]
    assert prune_stage["kept_heads"] == [8] * 6 and prune_stage["kept_neurons"] == [1024] * 6
    assert manifest["stages"]["export"]["max_abs_diff_pruned"] < 1e-4
    assert (run_dir / manifest["stages"]["quantize"]["onnx_path"]).is_file()
    assert sorted(manifest["outputs"]) == ["dense-onnx/model.onnx", "int8/model.onnx", "onnx/model.onnx"]
    names = [m["name"] for m in manifest["models"]]
    assert names[:2] == ["dense fp32", "pruned fp32"] and names[2].startswith("pruned ")
    dense, _, final = manifest["models"]
    assert manifest["budget"]["latency_ms"] == pytest.approx(dense["latency_ms"]["p90"] / 1.2, rel=1e-3)
    assert manifest["verdicts"][0]["value"] == pytest.approx(final["latency_ms"]["p90"], rel=1e-3)
    assert final["size_mb"] < dense["size_mb"] / 3  # int8 weights and a third fewer encoder weights
    for model in manifest["models"]:
        assert model["memory_mb"]["peak_over_baseline_mb"] > 0
        assert (run_dir / model["model"]).is_file()  # paths are relative to the run directory


def test_pruned_model_quality_and_int8_agreement(run_dir) -> None:
    dense, pruned, final = json.loads((run_dir / "run.json").read_text())["models"]
    assert dense["cosine_fidelity"] == pytest.approx(1.0, abs=1e-5)
    assert 0.5 < pruned["cosine_fidelity"] < 1.0
    assert abs(final["cosine_fidelity"] - pruned["cosine_fidelity"]) < 0.03


def test_outputs_load_with_optimum_and_match_the_api(run_dir) -> None:
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    reloaded = load_pruned(run_dir / "pruned")
    api = prune_loaded(load_model(), keep_flops=2 / 3)
    assert api.plan == reloaded.plan  # the CLI and the Python API make the same plan, with the same defaults
    assert (api.plan.criterion, api.plan.recovery["method"]) == ("fisher", "lstsq")
    for name, tensor in api.model.state_dict().items():  # ... and the same recovered weights
        torch.testing.assert_close(reloaded.model.state_dict()[name], tensor, rtol=0, atol=0)
    texts = ["A man is playing a guitar.", "Phones run neural networks on small batteries."]
    ours = evaluate.onnx_encoder(run_dir / "int8" / "model.onnx", reloaded.processor, "mean")(texts)
    ort_model = ORTModelForFeatureExtraction.from_pretrained(run_dir / "int8")
    encoded = reloaded.processor(texts, padding=True, return_tensors="np")
    hidden = ort_model(**encoded).last_hidden_state
    np.testing.assert_allclose(evaluate.pool(np.asarray(hidden), encoded["attention_mask"], "mean"), ours,
                               atol=1e-5)
    torch_pruned = evaluate.torch_encoder(reloaded)(texts)
    assert evaluate.cosine_fidelity(torch_pruned, ours) > 0.97


def test_dense_stsb_spearman_matches_the_published_figure() -> None:
    if not STSB.is_file():
        pytest.skip(f"STS-B dev set not found at {STSB} (the shared data folder is not beside this checkout)")
    score = evaluate.stsb_spearman(evaluate.torch_encoder(load_model()), STSB)
    assert score == pytest.approx(86.7, abs=0.1)


HELD_OUT = ["The committee approved the new budget after a long debate.", "A woman is slicing an onion.",
            "Heavy snow closed the mountain pass for three days.", "Two children are playing chess in a park.",
            "The startup raised forty million dollars in its latest round.", "A dog catches a frisbee.",
            "Scientists found water ice near the moon's south pole.", "The train to Berlin was cancelled.",
            "He plays the violin in a small jazz band.", "Prices of fresh vegetables rose again in March.",
            "The goalkeeper saved a penalty in the final minute.", "Please send the report before Friday."]


def test_least_squares_recovery_brings_pruned_minilm_back_towards_dense() -> None:
    from edgeprune.data import calibration_sentences
    from edgeprune.models.loading import LoadedModel
    from edgeprune.pruning.calibration import calibration_batches

    dense = load_model()
    batches = calibration_batches(dense.processor, calibration_sentences())  # disjoint from HELD_OUT
    reference = evaluate.torch_encoder(dense)(HELD_OUT)
    fidelity = {}
    for recovery in ("none", "lstsq"):
        model, plan = prune(dense.model, keep_flops=0.6, batches=batches,
                            options=PruneOptions(criterion="activation", recover=recovery))
        loaded = LoadedModel(model, dense.processor, dense.path, dense.task, dense.pooling, plan)
        fidelity[recovery] = evaluate.cosine_fidelity(reference, evaluate.torch_encoder(loaded)(HELD_OUT))
    assert plan.recovery["refit"] >= 6 and plan.recovery["held_out_error_after"] < plan.recovery[
        "held_out_error_before"]
    assert fidelity["lstsq"] > fidelity["none"] + 0.05, fidelity  # measured 0.79 → 0.90

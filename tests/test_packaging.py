"""Mobile packaging: ORT format, reduced-operator config, execution-provider report, fixed-shape variant, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from transformers import AutoTokenizer
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.files import sha256_file
from edgeprune.packaging import PackageOptions, package
from edgeprune.packaging.usability import analyze

runner = CliRunner()
TEXTS = ["The phone runs the model on its own cores.", "A second, longer sentence pads the first one in a batch."]


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})


@pytest.fixture(scope="module")
def bundles(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return {name: package(tiny_onnx, name, out / name).out_dir for name in ("android-flagship-sd8gen3",
                                                                            "iphone-a17-pro")}


@pytest.mark.parametrize(("profile", "providers"), [("android-flagship-sd8gen3", ["NNAPI", "XNNPACK"]),
                                                    ("iphone-a17-pro", ["CoreML", "XNNPACK"])])
def test_bundle_runs_like_the_onnx_and_reports_each_provider(bundles, tiny_onnx, profile, providers) -> None:
    bundle = bundles[profile]
    manifest = json.loads((bundle / "bundle.json").read_text())
    # the .ort, fed real tokenized text with the bundle's own tokenizer, gives the source .onnx's outputs
    tokens = AutoTokenizer.from_pretrained(bundle)(TEXTS, padding=True, return_tensors="np")
    feeds = {name: np.asarray(value, dtype=np.int64) for name, value in tokens.items()}
    for got, want in zip(_outputs(bundle / "model.ort", feeds), _outputs(tiny_onnx, feeds)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert [ep["provider"] for ep in manifest["execution_providers"]] == providers
    for ep in manifest["execution_providers"]:
        assert 0 <= ep["supported_nodes"] <= ep["nodes"] and ep["verdict"] in ("use", "maybe", "avoid")
        assert ep["nodes"] - ep["supported_nodes"] >= ep["dynamic_shape_nodes"]
        # a text model's inputs are dynamic: the report says what fixed shapes would change
        assert ep["dynamic_shape_nodes"] > 0 and ep["with_fixed_shapes"] is not None
        assert ep["with_fixed_shapes"]["supported_nodes"] >= ep["supported_nodes"]
    # the manifest's hashes are the files' own; the config lists the operators the model uses
    for model in manifest["models"]:
        assert sha256_file(bundle / model["file"]) == model["sha256"]
    assert manifest["source"]["sha256"] == sha256_file(tiny_onnx)
    config = (bundle / manifest["config"]["file"]).read_text()
    assert "MatMul" in config and manifest["config"]["operators"] >= 5
    assert manifest["profile"]["name"] == profile and manifest["optimization_level"] == "all"
    assert (bundle / "tokenizer.json").is_file() and "tokenizer.json" in manifest["files"]
    readme = (bundle / "README.md").read_text()
    assert all(name in readme for name in ("model.ort", manifest["config"]["file"], profile, "tokenizer.json"))
    assert ("addNnapi" in readme) == (profile.startswith("android") and any(
        ep["provider"] == "NNAPI" and ep["verdict"] != "avoid" for ep in manifest["execution_providers"]))


def _cnn(path: Path) -> Path:
    """Conv → Relu → GlobalAveragePool → Flatten → Gemm with a dynamic batch: every node NNAPI supports, none
    taken while the batch is dynamic."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
               (("w", (8, 3, 3, 3)), ("b", (8,)), ("fc", (4, 8)), ("fc_b", (4,)))]
    nodes = [helper.make_node("Conv", ["pixel_values", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "fc", "fc_b"], ["logits"],
                                                                          transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                                                           ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_fixed_shape_variant_is_made_when_it_wins_an_accelerator(tmp_path) -> None:
    model = _cnn(tmp_path / "cnn.onnx")
    (nnapi,) = analyze(model, ["NNAPI"])
    assert (nnapi.supported_nodes, nnapi.verdict) == (0, "avoid")  # dynamic batch: NNAPI takes nothing
    assert nnapi.with_fixed_shapes.verdict == "use" and nnapi.with_fixed_shapes.partitions == 1
    bundle = package(model, "android-flagship-sd8gen3", tmp_path / "bundle")
    fixed = bundle.manifest["fixed_shape_variant"]
    assert fixed["made"] and fixed["inputs"] == {"pixel_values": [1, 3, 16, 16]} and "NNAPI" in fixed["why"]
    assert {u["provider"]: u["verdict"] for u in fixed["usability"]}["NNAPI"] == "use"
    pixels = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = _outputs(model, {"pixel_values": pixels})[0]
    for name in ("model.ort", "model.fixed.ort"):
        np.testing.assert_allclose(_outputs(bundle.out_dir / name, {"pixel_values": pixels})[0], want, atol=1e-5)
    sess = ort.InferenceSession(str(bundle.out_dir / "model.fixed.ort"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, 3, 16, 16]
    assert "model.fixed.ort" in (bundle.out_dir / "README.md").read_text()
    # asked not to, it is not made, and the manifest says so
    plain = package(model, "android-flagship-sd8gen3", tmp_path / "plain", PackageOptions(fixed_shapes="no"))
    assert not plain.manifest["fixed_shape_variant"]["made"] and not (plain.out_dir / "model.fixed.ort").exists()


def test_decoder_bundle_keeps_dynamic_shapes(tiny_decoder_onnx, tmp_path) -> None:
    bundle = package(tiny_decoder_onnx, "android-flagship-sd8gen3", tmp_path / "bundle",
                     PackageOptions(fixed_shapes="yes", seq_len=8))
    assert not bundle.manifest["fixed_shape_variant"]["made"]
    assert "key/value cache" in bundle.manifest["fixed_shape_variant"]["why"]
    assert bundle.manifest["models"][0]["max_abs_diff_vs_onnx"] <= 1e-4


def test_cli_matches_the_api_and_refuses_bad_input(tiny_onnx, bundles, tmp_path) -> None:
    before = sha256_file(tiny_onnx)
    result = runner.invoke(app, ["package", str(tiny_onnx), "--profile", "iphone-a17-pro", "--out",
                                 str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "CoreML" in result.output and "model.ort" in result.output
    cli, api = (json.loads((d / "bundle.json").read_text()) for d in (tmp_path / "cli", bundles["iphone-a17-pro"]))
    # onnxruntime does not write an .ort byte for byte the same twice (its initializer order varies); all else is
    for model in (*cli["models"], *api["models"]):
        model.pop("sha256")
    assert cli["models"] == api["models"] and cli["execution_providers"] == api["execution_providers"]
    assert cli["config"]["operators"] == api["config"]["operators"]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    for args, words in [([str(broken), "--out", str(tmp_path / "b1")], "not a loadable ONNX model"),
                        ([str(tiny_onnx), "--out", str(tiny_onnx.parent)], "overlaps the input"),
                        ([str(tiny_onnx), "--profile", "no-such-phone", "--out", str(tmp_path / "b2")],
                         "unknown device profile"),
                        ([str(tiny_onnx), "--fixed-shapes", "maybe", "--out", str(tmp_path / "b3")],
                         "--fixed-shapes")]:
        result = runner.invoke(app, ["package", *args])
        assert result.exit_code == 2 and words in result.output, result.output
    assert not any((tmp_path / name).exists() for name in ("b1", "b2", "b3"))
    assert sha256_file(tiny_onnx) == before

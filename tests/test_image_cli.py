"""``edgeprune prune`` for image models: a Python factory or the packaged EfficientNet-Lite0, a folder of images (every
4th held out), optional labels, distillation or data-free synthesis; one atomic output directory that reloads."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeprune import runtime
from edgeprune.cli import app
from edgeprune.data.synthesize import SynthesisOptions
from edgeprune.pipeline.images import ImagePruneSettings, load_pruned_image, prune_image_model
from edgeprune.pruning.conv_distill import DistillOptions

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_sample"

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn


    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                              nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
        model.train()
        with torch.no_grad():
            for _ in range(5):
                model(torch.rand(16, 3, 32, 32) * 2 - 0.5)
        return model.eval()


    def not_a_model():
        return 42
''')


@pytest.fixture()
def factory(tmp_path, monkeypatch) -> str:
    package = tmp_path / "code"
    package.mkdir()
    (package / "tiny_vision.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(package))
    return "tiny_vision:build"


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((48, 40), Image.BILINEAR).save(folder / f"img{i:02d}.png")
    return folder


def test_a_factory_model_is_pruned_distilled_and_reloads(factory, image_folder, tmp_path) -> None:
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", factory, "--images", str(image_folder), "--input-size", "32",
                                 "--keep-flops", "0.6", "--distill-minutes", "0.05", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "held-out images: top-1 agreement" in result.output and "distillation:" in result.output
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {
        "model.onnx", "model.safetensors", "channel_plan.json", "image_model.json", "report.json"}
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["evaluation"]["held_out_images"] == 6 and report["calibration_images"] == 18
    assert report["recovery"]["method"] == "distill" and report["kept_macs_fraction"] < 0.95  # 8-channel rounding
    plan = json.loads((out / "channel_plan.json").read_text())
    assert (plan["criterion"], plan["allocation"]) == ("fisher", "global")  # the image default with images to score on
    assert report["recovery"]["start"]["method"] == "bn"  # statistics re-estimated on real images
    reloaded = load_pruned_image(out)
    x = torch.randn(3, 3, 32, 32)
    session = runtime.session(out / "model.onnx")
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(reloaded.module(x).numpy(), onnx_out, atol=1e-4)


def test_image_defaults_follow_what_there_is_to_score_on() -> None:
    """Fisher scores (ranked across layers) need images; without any, weight magnitude per layer."""
    with_images = ImagePruneSettings(model="efficientnet-lite0", images="imgs")
    assert (with_images.criterion, with_images.allocation) == ("fisher", "global")
    data_free = ImagePruneSettings(model="efficientnet-lite0", data_free=True, criterion="taylor")
    assert (data_free.criterion, data_free.allocation) == ("taylor", "global")
    bare = ImagePruneSettings(model="efficientnet-lite0", recover="none")
    assert (bare.criterion, bare.allocation) == ("magnitude", "uniform")
    chosen = ImagePruneSettings(model="efficientnet-lite0", images="imgs", criterion="magnitude", allocation="global")
    assert (chosen.criterion, chosen.allocation) == ("magnitude", "global")


def test_labels_give_top1_and_the_api_matches_the_cli_settings(factory, image_folder, tmp_path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,class_index\n" + "".join(f"img{i:02d}.png,{i % 10}\n" for i in range(24)))
    settings = ImagePruneSettings(model=factory, input_size=32, images=str(image_folder), labels=str(labels),
                                  keep_flops=0.7, recover="lstsq")
    result = prune_image_model(settings, tmp_path / "out")
    evaluation = result.report["evaluation"]
    assert {"top1", "dense_top1", "top1_agreement"} <= set(evaluation)
    assert result.plan.recovery["method"] == "lstsq"


def test_data_free_synthesizes_its_calibration_images(factory, image_folder, tmp_path) -> None:
    settings = ImagePruneSettings(model=factory, input_size=32, images=str(image_folder), data_free=True,
                                  keep_flops=0.7, synthesis=SynthesisOptions(count=16, size=32, batch_size=16, steps=5),
                                  distill=DistillOptions(steps=4, minutes=None, batch_size=8, check_every=2))
    result = prune_image_model(settings, tmp_path / "out")
    assert result.report["calibration"] == "synthesized" and result.report["calibration_images"] == 16
    assert result.report["recovery"]["steps"] == 4 and result.report["evaluation"]["held_out_images"] == 6
    assert result.report["recovery"]["start"] == {"method": "none"}  # never re-estimated on synthesized images


@pytest.mark.parametrize(("args", "message"), [
    (["model.pt", "--recover", "none"], "TorchScript"),
    (["no_such_module_xyz:build", "--recover", "none"], "cannot import"),
    (["tiny_vision:not_a_model", "--recover", "none"], "not a torch.nn.Module"),
    (["tiny_vision:build"], "need images"),
    (["tiny_vision:build", "--images", "IMAGES", "--criterion", "fluctuation"], "does not apply to image models"),
    (["tiny_vision:build", "--images", "IMAGES", "--heads-ratio", "0.5"], "apply to transformers"),
    (["tiny_vision:build", "--images", "IMAGES", "--labels", "LABELS"], "have no label"),
])
def test_bad_image_model_input_is_one_line_and_exit_2(factory, image_folder, tmp_path, args, message) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,class_index\nimg00.png,1\n")
    args = [{"IMAGES": str(image_folder), "LABELS": str(labels)}.get(a, a) for a in args]
    result = runner.invoke(app, ["prune", *args, "--input-size", "32", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.real_model
def test_the_cli_prunes_the_packaged_efficientnet_end_to_end(tmp_path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    names = sorted((SAMPLE / "images").iterdir())[:24]
    for path in names:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", "efficientnet-lite0", "--images", str(folder), "--labels",
                                 str(SAMPLE / "labels.csv"), "--keep-flops", "0.85", "--distill-minutes", "0.25",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["recovery"]["method"] == "distill" and report["recovery"]["steps"] >= 1
    assert report["kept_macs_fraction"] <= 0.88 and report["evaluation"]["held_out_images"] == 6
    assert report["evaluation"]["dense_top1"] >= 0.5  # the labels were matched to the right files
    assert (out / "model.onnx").stat().st_size < 0.95 * 4.65e6 * 4


def test_optimize_allocates_by_the_measured_table_quantizes_and_checks_the_budget(factory, image_folder,
                                                                                  tmp_path) -> None:
    import json

    out = tmp_path / "run"
    result = runner.invoke(app, ["optimize", factory, "--images", str(image_folder), "--input-size", "32",
                                 "--latency-ms", "1000", "--percentile", "p50", "--recover", "lstsq", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["predicted_ms"] <= 1000 and report["passed"] is True
    [timed] = report["allocation_attempts"]  # a generous budget: the first allocation, timed whole, fits
    assert 0 < timed["measured_ms"] <= 1000 and timed["aim_ms"] == 1000
    assert "measured" in result.output and "1 allocation(s) timed whole" in result.output
    assert [v["metric"] for v in report["verdicts"]] == ["latency_p50"] and report["verdicts"][0]["status"] == "PASS"
    assert (out / "quantized" / "model.onnx").is_file() and not (out / "table").exists()
    assert set(report["latency_table"]["spaces"]) and report["quantized"]["form"] in report["quantized"]["p50_ms"]


@pytest.mark.parametrize(("args", "message"), [
    (["--latency-ms", "0.000001"], "raise the latency budget"),
    ([], "needs a latency budget"),
    (["--latency-ms", "5", "--profile", "rpi5"], "--profile rpi5: not for image models"),
])
def test_optimize_refuses_what_it_cannot_do_for_image_models(factory, image_folder, tmp_path, args, message) -> None:
    result = runner.invoke(app, ["optimize", factory, "--images", str(image_folder), "--input-size", "32",
                                 "--recover", "none", *args, "-o", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "run").exists()

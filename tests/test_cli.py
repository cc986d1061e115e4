from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeprune.cli import app

runner = CliRunner()
FAST = ["--runs", "5", "--seq-len", "16", "--threads", "1"]


def _one_clear_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_check_exit_codes_and_reports(tiny_onnx, tmp_path) -> None:
    ok = runner.invoke(app, ["check", str(tiny_onnx), "--latency-ms", "10000", "--memory-mb", "10000",
                             "--json", str(tmp_path / "ok.json"), "--junit", str(tmp_path / "ok.xml"), *FAST])
    assert ok.exit_code == 0, ok.output
    report = json.loads((tmp_path / "ok.json").read_text())
    assert report["passed"] is True and [v["metric"] for v in report["verdicts"]] == ["latency_p90", "peak_memory"]
    assert 'failures="0"' in (tmp_path / "ok.xml").read_text()

    over = runner.invoke(app, ["check", str(tiny_onnx), "--latency-ms", "0.0001", "--percentile", "p50",
                               "--junit", str(tmp_path / "over.xml"), "--markdown", str(tmp_path / "over.md"), *FAST])
    assert over.exit_code == 1, over.output
    assert "FAIL" in over.stdout and 'failures="1"' in (tmp_path / "over.xml").read_text()
    summary = (tmp_path / "over.md").read_text()
    assert summary.startswith("### edgeprune check: FAIL") and "| host | latency_p50 | 0.0001 ms |" in summary


@pytest.mark.parametrize("args, cause", [
    (["--latency-ms", "-3"], "not a positive finite number"),
    ([], "no budget given"),
    (["--latency-ms", "5", "--percentile", "p42"], "unknown percentile"),
    (["--latency-ms", "5", "--profile", "pixel-99"], "unknown device profile"),
])
def test_check_bad_arguments(tiny_onnx, tmp_path, args, cause) -> None:
    result = runner.invoke(app, ["check", str(tiny_onnx), *args, "--json", str(tmp_path / "r.json"), *FAST])
    assert cause in _one_clear_error(result)
    assert not (tmp_path / "r.json").exists()


def test_bad_model_files(tmp_path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf")
    missing = tmp_path / "missing.onnx"
    for path, cause in ((corrupt, "not a loadable ONNX model"), (missing, "does not exist")):
        result = runner.invoke(app, ["check", str(path), "--latency-ms", "5", "--json", str(tmp_path / "r.json")])
        assert cause in _one_clear_error(result)
        result = runner.invoke(app, ["quantize", str(path), "--out", str(tmp_path / "q")])
        assert cause in _one_clear_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.onnx"]


def test_malformed_profile_yaml(tiny_onnx, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncpu: {cores: 4\n")
    result = runner.invoke(app, ["check", str(tiny_onnx), "--latency-ms", "5", "--profile", str(bad)])
    assert "not valid YAML" in _one_clear_error(result)
    result = runner.invoke(app, ["profiles", "show", str(bad)])
    assert "not valid YAML" in _one_clear_error(result)
    result = runner.invoke(app, ["profiles", "validate", str(bad)])
    assert "not valid YAML" in _one_clear_error(result)


def test_profiles_validate_names_the_bad_field(tmp_path) -> None:
    from edgeprune.devices import profile_dir

    good = profile_dir() / "rpi5.yaml"
    result = runner.invoke(app, ["profiles", "validate", str(good)])
    assert result.exit_code == 0 and "valid profile 'rpi5'" in result.stdout and "measured" in result.stdout
    bad = tmp_path / "rpi5.yaml"
    bad.write_text(good.read_text().replace("unit: GHz", "unit: Hz", 1))
    assert "field 'cpu.clusters.0.max_clock.unit'" in _one_clear_error(runner.invoke(app, ["profiles", "validate",
                                                                                         str(bad)]))


def test_unknown_architecture_and_missing_model_write_nothing(tmp_path) -> None:
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    out = tmp_path / "out"
    result = runner.invoke(app, ["prune", str(gpt), "--out", str(out), "--keep-flops", "0.5"])
    assert "no pruning adapter for architecture 'gpt2'" in _one_clear_error(result)
    for command in (["prune", "--keep-flops", "0.5"], ["export"], ["optimize"]):
        result = runner.invoke(app, [command[0], str(tmp_path / "nope"), "--out", str(out), *command[1:]])
        assert "does not exist" in _one_clear_error(result)
    assert not out.exists()


def test_output_never_overwrites_input_or_foreign_files(tiny_bert_dir, tmp_path) -> None:
    result = runner.invoke(app, ["prune", str(tiny_bert_dir), "--out", str(tiny_bert_dir), "--keep-flops", "0.5"])
    assert "overlaps the input" in _one_clear_error(result)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["export", str(tiny_bert_dir), "--out", str(foreign)])
    assert "not written by edgeprune" in _one_clear_error(result)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_prune_export_quantize_profile_commands(tiny_bert_dir, tmp_path) -> None:
    pruned, onnx_dir, int8 = tmp_path / "pruned", tmp_path / "onnx", tmp_path / "int8"
    result = runner.invoke(app, ["prune", str(tiny_bert_dir), "--out", str(pruned), "--heads-ratio", "0.5"])
    assert result.exit_code == 0, result.output
    assert (pruned / "pruning_plan.json").is_file() and (pruned / "model.safetensors").is_file()
    result = runner.invoke(app, ["export", str(pruned), "--out", str(onnx_dir)])
    assert result.exit_code == 0 and "parity max" in result.stdout
    # re-running into the same edgeprune-written directory replaces it atomically
    assert runner.invoke(app, ["export", str(pruned), "--out", str(onnx_dir)]).exit_code == 0
    result = runner.invoke(app, ["quantize", str(onnx_dir / "model.onnx"), "--out", str(int8)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["profile", str(int8 / "model.onnx"), "--json", str(tmp_path / "m.json"), *FAST])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["latency_ms"]["runs"] == 5
    assert "x86-avx2-server" in runner.invoke(app, ["profiles", "list"]).stdout


def test_prune_with_a_data_driven_criterion_records_it(tiny_bert_dir, tmp_path) -> None:
    calibration = tmp_path / "calib.txt"
    calibration.write_text("\n".join(f"sentence number {i} about edge devices" for i in range(20)))
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", str(tiny_bert_dir), "--out", str(out), "--keep-flops", "0.5",
                                 "--criterion", "fisher", "--accumulate", "ema", "--ema-decay", "0.8",
                                 "--calibration", str(calibration)])
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "pruning_plan.json").read_text())
    assert (plan["criterion"], plan["accumulate"], plan["ema_decay"], plan["calibration_texts"]) == (
        "fisher", "ema", 0.8, 20)
    bad = runner.invoke(app, ["prune", str(tiny_bert_dir), "--out", str(tmp_path / "x"), "--keep-flops", "0.5",
                              "--criterion", "oracle"])
    assert "unknown --criterion 'oracle'" in _one_clear_error(bad)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("recover", ["lstsq", "distill"])
def test_prune_with_recovery_gives_the_same_model_as_the_api(tiny_bert_dir, tmp_path, recover) -> None:
    import safetensors.torch

    from edgeprune.models.loading import load_model
    from edgeprune.options import PruneOptions
    from edgeprune.pruning.loaded import prune_loaded

    calibration = tmp_path / "calib.txt"
    calibration.write_text("\n".join(f"sentence {i} about {w} on edge devices" for i, w in
                                     enumerate(["phones", "boards", "servers", "latency", "memory"] * 8)))
    out = tmp_path / "pruned"
    args = ["--keep-flops", "0.5", "--criterion", "taylor", "--recover", recover, "--distill-steps", "5",
            "--calibration", str(calibration)]
    result = runner.invoke(app, ["prune", str(tiny_bert_dir), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "pruning_plan.json").read_text())
    assert plan["recovery"]["method"] == recover and plan["recovery"]["projections"] == 6
    assert "least-squares recovery" in result.stdout
    assert (recover == "distill") == ("distillation: 5 steps" in result.stdout)
    options = PruneOptions(criterion="taylor", recover=recover, distill_steps=5, calibration=str(calibration))
    api = prune_loaded(load_model(tiny_bert_dir), keep_flops=0.5, options=options)
    cli_weights = safetensors.torch.load_file(out / "model.safetensors")
    for name, tensor in api.model.state_dict().items():
        assert name in cli_weights and (cli_weights[name] == tensor).all(), name


def test_check_on_another_device_reports_a_predicted_band(tiny_onnx, tmp_path, rates_cache, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(rates_cache))
    result = runner.invoke(app, ["check", str(tiny_onnx), "--profile", "rpi4", "--latency-ms", "100000",
                                 "--json", str(tmp_path / "v.json"), "--junit", str(tmp_path / "v.xml"),
                                 "--runs", "5", "--seq-len", "16"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "v.json").read_text())
    line = report["verdicts"][0]
    assert line["predicted"] and line["low"] < line["value"] < line["high"] and line["status"] == "PASS"
    assert report["measurement"]["predicted"] and "ISA family" in result.stdout
    assert 'failures="0"' in (tmp_path / "v.xml").read_text()
    shown = runner.invoke(app, ["profile", str(tiny_onnx), "--profile", "rpi4", "--runs", "5", "--seq-len", "16"])
    assert shown.exit_code == 0 and "predicted" in shown.stdout, shown.output


def test_calibrate_writes_a_new_profile_and_never_the_input(tiny_onnx, tmp_path, rates_cache, monkeypatch) -> None:
    from edgeprune.devices import parse_profile, profile_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(rates_cache))
    source = tmp_path / "rpi5.yaml"
    source.write_text((profile_dir() / "rpi5.yaml").read_text())
    before = source.read_text()
    out = tmp_path / "rpi5-calibrated.yaml"
    result = runner.invoke(app, ["calibrate", str(source), "--measure", f"{tiny_onnx}=7.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    calibrated = parse_profile(out)
    assert calibrated.calibration.latency_factor.value > 0 and calibrated.calibration.band.value >= 0.10
    assert calibrated.calibration.anchors[0].latency.value == 7.5 and source.read_text() == before
    same = runner.invoke(app, ["calibrate", str(source), "--measure", f"{tiny_onnx}=7.5", "--out", str(source)])
    assert "would overwrite the input" in _one_clear_error(same) and source.read_text() == before
    bad = runner.invoke(app, ["calibrate", "rpi5", "--measure", f"{tiny_onnx}", "--out", str(tmp_path / "x.yaml")])
    assert "is not MODEL.onnx=LATENCY_MS" in _one_clear_error(bad)


def test_calibrate_warns_when_a_measurement_is_far_outside_the_predicted_band(tiny_onnx, tmp_path, rates_cache,
                                                                             monkeypatch) -> None:
    """A figure 10^4 times the prediction (a wrong device, threads or model) still calibrates, but visibly."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(rates_cache))
    out = tmp_path / "far.yaml"
    result = runner.invoke(app, ["calibrate", "rpi5", "--measure", f"{tiny_onnx}=90000", "--out", str(out)])
    assert result.exit_code == 0 and out.is_file(), result.output
    assert "warning:" in result.stderr and f"{tiny_onnx.name}: measured 9e+04 ms is outside the predicted" in (
        " ".join(result.stderr.split()))


def test_ci_example_script_fails_the_build_over_budget(tiny_onnx, tmp_path) -> None:
    script = Path(__file__).resolve().parents[1] / "examples" / "ci" / "check-budgets.sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "EDGEPRUNE_REPORTS": str(tmp_path / "reports"), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    over = subprocess.run(["bash", str(script), str(tiny_onnx), "0.0001", "host"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert over.returncode == 1, over.stdout + over.stderr
    assert 'failures="1"' in (tmp_path / "reports" / "host.xml").read_text()
    assert "FAIL" in (tmp_path / "summary.md").read_text()
    within = subprocess.run(["bash", str(script), str(tiny_onnx), "10000", "host"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert within.returncode == 0, within.stdout + within.stderr

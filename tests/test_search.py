"""Budgeted search and the run reports: Pareto front, impossible budgets, HTML in a browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.devices import load_profile
from edgeprune.files import sha256_file
from edgeprune.models.loading import load_model
from edgeprune.options import PruneOptions
from edgeprune.pruning import Accumulation, make_plan
from edgeprune.quantization import FORMS
from edgeprune.report import Report
from edgeprune.search import Bounds, Candidate, mark_pareto
from edgeprune.search.latency_table import LatencyTable

runner = CliRunner()
FAST = ["--threads", "1", "--runs", "12", "--seq-len", "32", "--recover", "none", "--criterion", "magnitude"]


def test_pareto_front() -> None:
    a, b, c = (Candidate(1.0, "int8", 10.0, 0.99), Candidate(0.7, "int8", 7.0, 0.97),
               Candidate(0.6, "int8", 8.0, 0.95))  # c is slower and worse than b
    mark_pareto([a, b, c])
    assert (a.pareto, b.pareto, c.pareto) == (True, True, False)


@pytest.fixture(scope="module")
def impossible_run(tmp_path_factory, tiny_bert_dir) -> tuple[object, Path]:
    out = tmp_path_factory.mktemp("search") / "run"
    result = runner.invoke(app, ["optimize", str(tiny_bert_dir), "--out", str(out), "--latency-ms", "0.0001", *FAST])
    return result, out


def test_impossible_budget_exits_1_and_still_writes_the_report(impossible_run) -> None:
    result, out = impossible_run
    assert result.exit_code == 1, result.output
    assert "out of reach" in result.stdout and "FAIL" in result.stdout
    report = Report.model_validate_json((out / "report.json").read_text())  # validates against the schema
    assert not report.passed and report.search is not None and not report.search.passed
    built = [c for c in report.search.candidates if not c.table]
    assert len(built) == 1 and built[0].verdict.startswith("misses the budget")  # a rebuild would repeat it
    assert report.kept_heads == [1, 1, 1] and report.kept_neurons == [1, 1, 1]  # the fastest allocation
    assert {c.setting for c in report.search.candidates if c.table} == {
        "dense", *(f"heads: {n} per layer" for n in (4, 3, 2, 1)),
        *(f"neurons: {n} per layer" for n in (72, 48, 24, 5))}
    table = report.search.table
    assert table["heads"][0]["count"] == 6 and table["neurons"][0]["count"] == 96  # both start at the dense model
    assert table["heads"][0]["model_ms"] == table["neurons"][0]["model_ms"]
    assert (out / "int8" / "model.onnx").is_file() and not (out / "search").exists()
    schema = json.loads((out / "report.schema.json").read_text())
    assert set(schema["required"]) >= {"verdicts", "models", "passed"}
    assert "# edgeprune: FAIL" in (out / "report.md").read_text()


def test_search_chooses_the_least_pruning_that_meets_the_budget(tiny_bert_dir, tmp_path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["optimize", str(tiny_bert_dir), "--out", str(out), "--latency-ms", "1000", *FAST,
                                 "--accumulate", "ema", "--ema-decay", "0.5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "run.json").read_text())
    search = manifest["stages"]["search"]
    assert search["passed"] and search["chosen_keep_flops"] == 1.0
    assert manifest["stages"]["prune"]["kept_macs_fraction"] == 1.0
    assert [c["verdict"] for c in search["candidates"] if not c["table"]] == ["chosen"]
    plan = json.loads((out / "pruned" / "pruning_plan.json").read_text())  # the search kept the pruning flags
    assert (plan["accumulate"], plan["ema_decay"], plan["seed"]) == ("ema", 0.5, 3)


class _Stop(Exception):
    """Raised by a stand-in to end a search once what it was given is recorded."""


def test_search_scores_with_the_given_options(tiny_bert_dir, tmp_path, monkeypatch) -> None:
    import edgeprune.search as search_module

    seen = {}

    def score(model, criterion, batches, accumulation, seed):
        seen.update(criterion=criterion, batches=batches, accumulation=accumulation, seed=seed)
        raise _Stop

    monkeypatch.setattr(search_module, "score", score)
    options = PruneOptions(criterion="activation", accumulate="ema", ema_decay=0.3, recover="none", batch_size=4,
                           seed=7)
    with pytest.raises(_Stop):
        search_module.search(load_model(tiny_bert_dir), 10.0, tmp_path / "search", options=options)
    assert (seen["criterion"], seen["accumulation"], seen["seed"]) == ("activation", Accumulation("ema", 0.3), 7)
    assert all(len(batch["input_ids"]) <= 4 for batch in seen["batches"]) and len(seen["batches"]) > 1


def test_candidates_are_pruned_with_the_given_options(tiny_bert_dir, tmp_path, monkeypatch) -> None:
    import edgeprune.search.build as build_module

    seen = {}

    def prune_loaded(dense, *, options, plan):
        seen.update(options=options, plan=plan)
        raise _Stop

    monkeypatch.setattr(build_module, "prune_loaded", prune_loaded)
    options = PruneOptions(recover="distill", distill_steps=5, batch_size=4, accumulate="ema")
    dense = load_model(tiny_bert_dir)
    plan = make_plan(dense.model, keep_flops=0.5)
    setup = build_module.Setup(dense=dense, dense_onnx=tmp_path / "dense.onnx", work=tmp_path, options=options,
                               timing=build_module.Timing(load_profile("host"), "p90", 1, 16, 3),
                               probe=build_module.QualityProbe(dense, [], np.zeros(0)), bounds=Bounds(10.0))
    builder = build_module.CandidateBuilder(setup, LatencyTable(1, ((1, 1.0),), ((1, 1.0),)), dense_ms=1.0)
    with pytest.raises(_Stop):
        builder.build(plan, 5.0)
    assert seen == {"options": options, "plan": plan} and builder.forms == FORMS  # nothing built: every form


def test_html_report_renders_in_chromium(impossible_run, tmp_path) -> None:
    from PIL import Image

    _, out = impossible_run
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    page = (out / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert dom.count("<figure data-plot=") == 3 and dom.count("<svg") >= 3
    assert "<table id=\"verdicts\">" in dom and "FAIL" in dom
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", page], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] >= 1000 and pixels.std() > 10  # drawn, not a blank page


def test_search_on_a_predicted_device_reports_a_band_and_packages(tiny_bert_dir, tmp_path, rates_cache,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(rates_cache))
    out = tmp_path / "run"
    result = runner.invoke(app, ["optimize", str(tiny_bert_dir), "--out", str(out), "--profile", "rpi5",
                                 "--latency-ms", "50", "--package", *FAST])
    report = Report.model_validate_json((out / "report.json").read_text())
    assert result.exit_code == (0 if report.passed else 1), result.output
    # --package: the run ends with the shipped model's bundle for the profile, its verdicts inside
    bundle = json.loads((out / "bundle" / "bundle.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert bundle["source"]["sha256"] == sha256_file(out / run["stages"]["quantize"]["onnx_path"])
    assert bundle["budget_verdicts"] == run["verdicts"] and bundle["profile"]["name"] == "rpi5"
    assert [ep["provider"] for ep in bundle["execution_providers"]] == ["XNNPACK"] and "XNNPACK" in result.output
    assert run["stages"]["package"]["bundle_size_mb"] == bundle["bundle_size_mb"]
    assert (out / "bundle" / "model.ort").is_file()
    assert report.search is not None and report.search.predicted and report.search.device == "rpi5"
    assert all(c.low_ms < c.latency_ms < c.high_ms for c in report.search.candidates)
    (line,) = report.verdicts
    assert line.profile == "rpi5" and line.predicted and line.low < line.value < line.high
    assert line.status == ("PASS" if line.high <= 50 else "FAIL" if line.low > 50 else "UNCERTAIN")


def test_search_keeps_a_memory_budget(tiny_bert_dir, tmp_path) -> None:
    """Fast enough is not enough: a candidate peaking above --memory-mb is pruned further, and when nothing fits
    the run fails and says the memory budget is what is out of reach."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["optimize", str(tiny_bert_dir), "--out", str(out), "--latency-ms", "1000",
                                 "--memory-mb", "0.001", *FAST])
    assert result.exit_code == 1, result.output
    report = Report.model_validate_json((out / "report.json").read_text())
    built = [c for c in report.search.candidates if not c.table]
    assert len(built) >= 2 and all(c.memory_mb > 0.001 for c in built)
    assert all(c.verdict.startswith("misses the memory budget") for c in built)
    assert built[1].keep_flops < built[0].keep_flops  # pruned further after the first missed memory
    assert report.search.advice.startswith("memory budget 0.001 MiB is out of reach")

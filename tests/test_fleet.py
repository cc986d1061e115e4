"""edgeprune sweep: many models × many devices, on Ray or in one process, resumable, into one fleet report.

Budgets are chosen so every cell's verdict is decided by memory (not affected by timing noise on a shared
machine): ``rpi5`` 1 MiB (FAIL) plus a 1000 ms latency line (PASS, or UNCERTAIN when the host is busy),
``x86-avx2-server`` 1000 MiB (PASS). Both are predicted, from one measurement per model. One local Ray cluster
(2 CPUs) serves the whole module.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.fleet import SweepOptions, sweep
from edgeprune.fleet.cache import attempts
from edgeprune.fleet.on_ray import MEASURE

runner = CliRunner()
SETTINGS = {"runs": 10, "threads": 1, "seq_len": 16}
PROFILES = [{"profile": "rpi5", "latency_ms": 1000, "memory_mb": 1},
            {"profile": "x86-avx2-server", "memory_mb": 1000}]
CRASHED = "tiny-hf@rpi5"


def _spec(folder: Path, models: list[dict], profiles: list[dict] = PROFILES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "SWEEP.yaml"
    path.write_text(yaml.safe_dump({"models": models, "profiles": profiles, "settings": SETTINGS}))
    return path


@pytest.fixture(scope="module")
def fleet_env(rates_cache):
    """Ray's workers inherit this process's environment when the cluster starts: the test cache goes in first.
    This host's GEMM rates are copied from the user's cache when it has them (~45 s of characterizing saved)."""
    from edgeprune.profiling.characterize import cached_rates

    mine = rates_cache / "edgeprune"
    mine.mkdir(exist_ok=True)
    for path in cached_rates().values():
        if not (mine / path.name).exists():
            shutil.copy(path, mine / path.name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(rates_cache))
        yield rates_cache


@pytest.fixture(scope="module")
def ray_address(fleet_env):
    """A local Ray cluster, on loopback, with the measuring resource; its address for other processes."""
    import ray  # in the dev extra: missing, these tests fail rather than skip

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    ray.init(num_cpus=2, resources={MEASURE: 1}, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, _node_ip_address="127.0.0.1")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    for sig, handler in handlers.items():  # Ray's driver installs its own; later tests get pytest's back
        signal.signal(sig, handler)


@pytest.fixture(scope="module")
def models(tiny_onnx, tiny_bert_dir) -> list[dict]:
    """Two ONNX models (their measurements could run at once) and a directory (exported first)."""
    return [{"name": "tiny-onnx", "path": str(tiny_onnx)}, {"name": "tiny-onnx-b", "path": str(tiny_onnx)},
            {"name": "tiny-hf", "path": str(tiny_bert_dir)}]


@pytest.fixture(scope="module")
def ray_run(ray_address, models, tmp_path_factory):
    """The sweep on Ray; the first attempt at tiny-hf@rpi5 kills its worker."""
    folder = tmp_path_factory.mktemp("ray-run")
    return sweep(_spec(folder, models), folder / "fleet", SweepOptions(crash_first_attempt=(CRASHED,)))


@pytest.fixture(scope="module")
def sequential_run(fleet_env, models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sequential-run")
    return sweep(_spec(folder, models), folder / "fleet", SweepOptions(ray=False))


def _cells(result) -> dict[str, dict]:
    return {row["cell"]: row for row in result.report["cells"]}


def _noisy(line: dict) -> bool:
    return line["status"] == "UNCERTAIN" and "predicted band" not in line.get("reason", "")


@pytest.mark.parametrize("text, field", [
    ("models: [{name: a, path: MODEL, colour: red}]\nprofiles: [{profile: host, memory_mb: 5}]",
     "models[0].colour: Extra inputs are not permitted"),
    ("models: [{name: a, path: MODEL}]\nprofiles: [{profile: host, memory_mb: 5}, {profile: pixel-99, "
     "latency_ms: 5}]", "profiles[1].profile: unknown device profile 'pixel-99'"),
    ("models: [{name: a, path: MODEL}\nprofiles: [{profile: host}]", "is not valid YAML at line 2"),
    ("models: &m [{name: a, path: MODEL}]\nprofiles: *m", "uses YAML aliases"),
    ("models: [{name: a, path: MODEL}, {name: b, path: missing.onnx}]\nprofiles: [{profile: host, memory_mb: 5}]",
     "models[1].path: 'missing.onnx' does not exist"),
    ("models: [{name: a, path: MODEL, run: prune}]\nprofiles: [{profile: host, memory_mb: 5}]",
     "models[0].run: prune needs a Hugging Face model directory"),
    ("models: [{name: a, path: MODEL}]\nprofiles: [{profile: rpi5, latency_ms: -3}]",
     "profiles[0].latency_ms: Input should be greater than 0"),
    ("models: [{name: a, path: MODEL}]\nprofiles: [{profile: rpi5, percentile: p90}]", "profiles[0]: no budget"),
    ("models: [{name: a, path: MODEL, settings: {seq_len: 0}}]\nprofiles: [{profile: host, memory_mb: 5}]",
     "models[0].settings.seq_len: Input should be greater than 0"),
])
def test_a_malformed_sweep_is_one_error_line_naming_the_field(tiny_onnx, tmp_path, text, field) -> None:
    spec = tmp_path / "SWEEP.yaml"
    spec.write_text(text.replace("MODEL", str(tiny_onnx)))
    result = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "fleet")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0], result.stderr
    assert not (tmp_path / "fleet").exists()


def test_sequential_and_ray_runs_give_the_same_verdicts(ray_run, sequential_run) -> None:
    on_ray, here = _cells(ray_run), _cells(sequential_run)
    assert ray_run.report["execution"]["ray"] and not sequential_run.report["execution"]["ray"]
    assert on_ray.keys() == here.keys() and len(on_ray) == 6
    for name, row in on_ray.items():
        assert row["status"] == here[name]["status"] == ("FAIL" if name.endswith("@rpi5") else "PASS"), name
        for mine, theirs in zip(row["verdicts"], here[name]["verdicts"]):
            assert mine["metric"] == theirs["metric"]
            # a latency line the shared host's noise made UNCERTAIN is the one difference allowed
            assert mine["status"] == theirs["status"] or _noisy(mine) or _noisy(theirs), (name, mine, theirs)
    assert not ray_run.passed and not ray_run.errors


def test_a_worker_killed_mid_task_is_retried_and_reported(ray_run) -> None:
    row = _cells(ray_run)[CRASHED]
    assert row["status"] == "FAIL" and row["attempts"] == 2 and row["retried"]
    assert CRASHED in ray_run.report["retried"]
    assert all(r["attempts"] == 1 for r in ray_run.report["cells"] if r["model"] != "tiny-hf")
    assert f"{CRASHED} (2 attempts)" in (ray_run.out_dir / "report.md").read_text()


def test_measurements_never_share_a_node(ray_run) -> None:
    sections = sorted({(row["measured"]["node"], row["measured"]["start"], row["measured"]["end"])
                       for row in ray_run.report["cells"]})
    assert len({pid for pid in (row["measured"]["pid"] for row in ray_run.report["cells"])}) >= 2  # several workers
    for (node, _, end), (next_node, start, _) in zip(sections, sections[1:]):
        assert node != next_node or start >= end, sections


def test_a_second_run_reads_the_cache_and_force_runs_again(ray_address, tiny_onnx, tmp_path) -> None:
    spec = _spec(tmp_path, [{"name": "tiny", "path": str(tiny_onnx)}], [{"profile": "host", "memory_mb": 1}])
    out = tmp_path / "fleet"
    first = runner.invoke(app, ["sweep", str(spec), "--out", str(out)])
    assert first.exit_code == 1, first.output  # FAIL: the 1 MiB budget, measured here
    (folder,) = out.glob("cache/*/attempts.jsonl")
    result = folder.parent / "result.json"
    written = result.read_text()

    again = runner.invoke(app, ["sweep", str(spec), "--out", str(out)])
    assert again.exit_code == 1, again.output
    report = json.loads((out / "report.json").read_text())
    assert report["execution"]["ran"] == 0 and report["execution"]["from_cache"] == 1
    assert len(attempts(folder.parent)) == 1 and result.read_text() == written

    forced = runner.invoke(app, ["sweep", str(spec), "--out", str(out), "--force"])
    assert forced.exit_code == 1, forced.output
    report = json.loads((out / "report.json").read_text())
    assert report["execution"]["ran"] == 1 and len(attempts(folder.parent)) == 1
    assert json.loads(result.read_text())["measured"] != json.loads(written)["measured"]


def test_a_cell_that_cannot_run_is_an_error_and_the_others_finish(ray_address, tiny_onnx, tmp_path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf")
    spec = _spec(tmp_path, [{"name": "corrupt", "path": str(corrupt)}, {"name": "tiny", "path": str(tiny_onnx)}],
                 PROFILES[1:])
    result = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "fleet")])
    assert result.exit_code == 2, result.output  # the model is bad input; the other cell still ran
    assert "error: corrupt@x86-avx2-server: " in result.stderr and "not a loadable ONNX model" in result.stderr
    out = tmp_path / "fleet"
    report = json.loads((out / "report.json").read_text())
    assert [row["status"] for row in report["cells"]] == ["ERROR", "PASS"]
    assert report["errors"][0]["error_kind"] == "input" and 'errors="1"' in (out / "junit.xml").read_text()
    assert len(list(out.glob("cache/*/result.json"))) == 1  # an error is not cached: the next sweep tries again


def test_an_interrupted_sweep_resumes_without_redoing_finished_cells(ray_address, tiny_onnx, tiny_bert_dir,
                                                                     tmp_path) -> None:
    """The CLI in its own process, on this module's cluster, stopped (SIGTERM, as a CI timeout does) once a cell is
    cached; a prune cell (the pipeline) is one of the two."""
    spec = _spec(tmp_path, [{"name": "tiny", "path": str(tiny_onnx)},
                            {"name": "tiny-pruned", "path": str(tiny_bert_dir), "run": "prune", "keep_flops": 0.5}],
                 PROFILES[1:])
    out = tmp_path / "fleet"
    command = [sys.executable, "-c", "from edgeprune.cli import app; app()", "sweep", str(spec), "--out", str(out),
               "--address", ray_address]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(out.glob("cache/*/result.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    finished = {p.parent.name: p.read_text() for p in out.glob("cache/*/result.json")}
    assert len(finished) == 1, "the sweep should have been stopped with one of its two cells done"

    resumed = sweep(spec, out)
    rows = {row["key"]: row for row in resumed.report["cells"]}
    assert resumed.report["execution"]["ran"] == 1 and resumed.report["execution"]["from_cache"] == 1
    for key, text in finished.items():
        assert rows[key]["from_cache"] and rows[key]["attempts"] == 1
        assert (out / "cache" / key / "result.json").read_text() == text
    pruned = next(row for row in rows.values() if row["run"] == "prune")
    assert pruned["status"] == "PASS" and 0 < pruned["quality"] <= 1
    assert (out / pruned["link"]).is_file() and pruned["link"].endswith("run/report.html")


def test_the_fleet_report_renders_in_chromium(ray_run, tmp_path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    page = (ray_run.out_dir / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    for row in ray_run.report["cells"]:
        cell = re.search(rf'<td class="cell (\w+)" data-cell="{re.escape(row["cell"])}"[^>]*>(.*?)</td>', dom)
        assert cell and cell.group(1) == row["status"], row["cell"]
        assert f">{row['status']}</a>" in cell.group(2)  # linked to the cell's result
        for line in row["verdicts"]:
            assert f"{line['metric']} {line['value']:.3g} {line['unit']}" in cell.group(2)
            assert f"{line['margin']:+.0%}" in cell.group(2)
    assert dom.count('<figure data-plot="latency-quality"') == 2
    assert dom.count('<circle class="point"') == len(ray_run.report["cells"])
    assert len(re.findall(r'<line class="budget" data-budget-ms="1000"', dom)) == 1  # rpi5's; the server has none
    assert CRASHED in re.search(r'<p id="retried">(.*?)</p>', dom).group(1)
    junit = (ray_run.out_dir / "junit.xml").read_text()
    assert junit.count("<testsuite ") == 6 and 'errors="0"' in junit

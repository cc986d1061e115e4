"""Exit codes CI can trust (0 pass, 1 over budget or uncertain, 2 bad input, 3 internal error, 130 interrupted),
options refused before any work starts, and signals that leave nothing half-written."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeprune.cli import EXIT_CODES, app
from edgeprune.files import lock_path

runner = CliRunner()
FAST = ["--runs", "3", "--seq-len", "16", "--threads", "1"]
EDGEPRUNE = str(Path(sys.executable).parent / "edgeprune")


def test_the_exit_code_table_is_the_documented_one() -> None:
    assert set(EXIT_CODES) == {0, 1, 2, 3, 130}


@pytest.mark.parametrize(("argv", "code"), [
    (["check", "{m}", "--latency-ms", "100000", *FAST], 0),
    (["check", "{m}", "--latency-ms", "0.000001", *FAST], 1),
    (["check", "{m}", "--profile", "rpi5", "--latency-ms", "0.000001", *FAST], 1),
    (["check", "{t}/missing.onnx", "--latency-ms", "10"], 2),
    (["profile", "{m}", *FAST], 0),
    (["profile", "{t}/missing.onnx"], 2),
], ids=["check-pass", "check-over", "check-predicted-over", "check-missing", "profile-ok", "profile-missing"])
def test_exit_codes(argv, code, tiny_onnx, tmp_path) -> None:
    result = runner.invoke(app, [a.format(m=tiny_onnx, t=tmp_path) for a in argv])
    assert result.exit_code == code, result.output


INTERNAL = [
    ("check", "edgeprune.budgets.check", ["check", "{m}", "--latency-ms", "10", *FAST]),
    ("profile", "edgeprune.profiling.measure_or_predict", ["profile", "{m}", *FAST]),
    ("quantize", "edgeprune.quantization.quantize", ["quantize", "{m}", "--out", "{t}/q"]),
    ("export", "edgeprune.exporting.export", ["export", "{d}", "--out", "{t}/e"]),
    ("prune", "edgeprune.pruning.loaded.prune_loaded", ["prune", "{d}", "--out", "{t}/p", "--keep-flops", "0.5"]),
    ("optimize", "edgeprune.pipeline.optimize", ["optimize", "{d}", "--out", "{t}/o"]),
    ("calibrate", "edgeprune.profiling.calibrate.calibrate", ["calibrate", "rpi5", "--measure", "{m}=5", "--out",
                                                              "{t}/c.yaml"]),
    ("profiles show", "edgeprune.devices.load_profile", ["profiles", "show", "rpi5"]),
]


@pytest.mark.parametrize(("name", "target", "argv"), INTERNAL, ids=[n for n, _, _ in INTERNAL])
def test_an_internal_error_exits_3_and_names_its_traceback(name, target, argv, tiny_onnx, tiny_bert_dir, tmp_path,
                                                          monkeypatch) -> None:
    def boom(*_args, **_kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(target, boom)
    result = runner.invoke(app, [a.format(m=tiny_onnx, d=tiny_bert_dir, t=tmp_path) for a in argv])
    assert result.exit_code == 3, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("internal error: RuntimeError: injected failure") and "bug in edgeprune" in line
    log = Path(line.split("the traceback is in ")[1].split(";")[0])
    assert "injected failure" in log.read_text() and "Traceback" in log.read_text()
    log.unlink()
    assert not any((tmp_path / name).exists() for name in ("q", "e", "p", "o", "c.yaml"))


@pytest.mark.parametrize("argv", [
    ["optimize", "{d}", "--out", "{t}/o", "--percentile", "p101"],
    ["optimize", "{d}", "--out", "{t}/o", "--min-speedup", "0"],
    ["optimize", "{d}", "--out", "{t}/o", "--keep-flops", "1.5"],
    ["optimize", "{d}", "--out", "{t}/o", "--latency-ms", "inf"],
    ["optimize", "{d}", "--out", "{t}/o", "--threads", "-1"],
    ["optimize", "{d}", "--out", "{t}/o", "--criterion", "oracle"],
    ["prune", "{d}", "--out", "{t}/p", "--keep-flops", "0"],
    ["prune", "{d}", "--out", "{t}/p", "--keep-flops", "0.5", "--ema-decay", "1.5"],
], ids=["percentile", "min-speedup", "keep-flops", "latency-inf", "threads", "criterion", "prune-keep-0", "ema"])
def test_bad_options_are_refused_before_any_work(argv, tiny_bert_dir, tmp_path, monkeypatch) -> None:
    def never(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("edgeprune.models.loading.load_model", never)
    monkeypatch.setattr("edgeprune.pipeline.load_model", never)
    result = runner.invoke(app, [a.format(d=tiny_bert_dir, t=tmp_path) for a in argv])
    assert result.exit_code == 2, result.output  # an AssertionError reaching the CLI would exit 3
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["check", "{m}", "--latency-ms", "inf", *FAST],
    ["check", "{m}", "--latency-ms", "nan", *FAST],
    ["check", "{m}", "--memory-mb", "-1", *FAST],
    ["check", "{m}", "--latency-ms", "10", "--threads", "-1"],
    ["check", "{m}", "--latency-ms", "10", "--runs", "0"],
    ["profile", "{m}", "--seq-len", "0"],
    ["profile", "{m}", "--batch", "0"],
    ["profile", "{m}", "--seq-len", "4096", "--runs", "2"],
], ids=["inf", "nan", "negative-memory", "threads", "runs", "seq-0", "batch-0", "seq-beyond-positions"])
def test_nonsense_values_are_one_clear_error(argv, tiny_onnx) -> None:
    result = runner.invoke(app, [a.format(m=tiny_onnx) for a in argv])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1


def test_a_model_without_inputs_is_bad_input(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    constant = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0]))
    graph = helper.make_graph([constant], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "none.onnx")
    result = runner.invoke(app, ["quantize", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "q")])
    assert result.exit_code == 2 and "has no inputs" in result.stderr


def _start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([EDGEPRUNE, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_scratch(parent: Path, name: str, process: subprocess.Popen, inside: str = "",
                      timeout: float = 180) -> Path:
    """The run's hidden staging folder, once it (and ``inside`` it, a stage's output) exists: the signal then lands
    in the middle of real work, at a known stage, with no sleep tuned to this machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in parent.glob(f".{name}.*.partial") if (p / inside).exists()]
        if found:
            return found[0]
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("the run never reached the stage")


@pytest.mark.parametrize(("sig", "command", "stage", "rerun"), [
    (signal.SIGTERM, "optimize", "", False),  # exporting the dense model
    (signal.SIGTERM, "optimize", "dense-onnx", True),  # pruning and recovering
    (signal.SIGINT, "optimize", "int8", False),  # profiling the three models
    (signal.SIGTERM, "quantize", "", True),  # building and timing int8 candidates
])
def test_sigterm_and_sigint_leave_no_staging_and_say_so(sig, command, stage, rerun, tiny_bert_dir, tiny_onnx,
                                                        tmp_path) -> None:
    out = tmp_path / "out"
    argv = (["optimize", str(tiny_bert_dir), "--out", str(out), *FAST] if command == "optimize"
            else ["quantize", str(tiny_onnx), "--out", str(out)])
    process = _start(argv)
    _wait_for_scratch(tmp_path, "out", process, inside=stage)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "interrupted:" in stderr and ("SIGTERM" if sig == signal.SIGTERM else "SIGINT") in stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".out.*.partial"))
    if rerun:  # the same command afterwards succeeds
        again = runner.invoke(app, argv)
        assert again.exit_code in (0, 1), again.output  # optimize's verdict may be FAIL on this tiny model
        assert out.is_dir()


def test_a_killed_runs_staging_is_removed_by_the_next_run(tiny_onnx, tmp_path) -> None:
    out = tmp_path / "q"
    process = _start(["quantize", str(tiny_onnx), "--out", str(out)])
    scratch = _wait_for_scratch(tmp_path, "q", process)
    process.kill()
    process.communicate(timeout=60)
    assert scratch.exists()  # SIGKILL cannot be handled: the scratch stays behind, hidden
    result = runner.invoke(app, ["quantize", str(tiny_onnx), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not scratch.exists() and (out / "model.onnx").is_file()


def test_two_runs_on_one_output_one_fails_clearly(tiny_onnx, tmp_path) -> None:
    out = tmp_path / "q"
    path = lock_path(out)
    path.parent.mkdir(exist_ok=True)
    with open(path, "a") as lock:  # another run holding the output
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = runner.invoke(app, ["quantize", str(tiny_onnx), "--out", str(out)])
    assert result.exit_code == 2 and "another edgeprune run is writing" in result.stderr
    assert not out.exists()

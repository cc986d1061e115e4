"""Never overwrite an input, never ship a stranger's files, outputs as the user's umask makes them.

Every case checks the exit code, exactly one error line naming cause and fix, and the bytes of
every input before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeprune.cli import app

runner = CliRunner()
FAST = ["--runs", "3", "--seq-len", "16", "--threads", "1"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture()
def model_copy(tiny_onnx: Path, tmp_path: Path) -> Path:
    """The tiny exported BERT with its sidecars, in a folder the test may litter."""
    folder = tmp_path / "home"
    folder.mkdir()
    for item in tiny_onnx.parent.iterdir():
        if item.is_file():
            (folder / item.name).write_bytes(item.read_bytes())
    return folder / "model.onnx"


OVERWRITES = [
    ("check --json", lambda m, t: ["check", str(m), "--latency-ms", "10", "--json", str(m), *FAST]),
    ("check --junit", lambda m, t: ["check", str(m), "--latency-ms", "10", "--junit", str(m), *FAST]),
    ("check --markdown", lambda m, t: ["check", str(m), "--latency-ms", "10", "--markdown", str(m), *FAST]),
    ("check --json through a link", lambda m, t: ["check", str(m), "--latency-ms", "10", "--json",
                                                  str(_link(m, t)), *FAST]),
    ("profile --json", lambda m, t: ["profile", str(m), "--json", str(m), *FAST]),
    ("calibrate --out the model", lambda m, t: ["calibrate", "rpi5", "--measure", f"{m}=5", "--out", str(m)]),
    ("calibrate --out the profile", lambda m, t: ["calibrate", str(_profile(t)), "--measure", f"{m}=5", "--out",
                                                  str(_profile(t))]),
    ("check --json onto a directory", lambda m, t: ["check", str(m), "--latency-ms", "10", "--json", str(t),
                                                    *FAST]),
]


def _link(model: Path, tmp: Path) -> Path:
    link = tmp / "link.json"
    if not link.exists():
        link.symlink_to(model)
    return link


def _profile(tmp: Path) -> Path:
    from edgeprune.devices import load_profile

    path = tmp / "mine.yaml"
    if not path.exists():
        path.write_text(load_profile("rpi5").to_yaml(), encoding="utf-8")
    return path


@pytest.mark.parametrize(("case", "args"), OVERWRITES, ids=[c for c, _ in OVERWRITES])
def test_no_output_overwrites_an_input(case, args, model_copy, tmp_path) -> None:
    argv = args(model_copy, tmp_path)
    inputs = [model_copy, model_copy.parent / "config.json", *([_profile(tmp_path)] if "profile" in case else [])]
    before = {p: digest(p) for p in inputs}
    line = one_error(runner.invoke(app, argv))
    assert ("overwrite the input" in line) or ("is a directory" in line), line
    assert {p: digest(p) for p in inputs} == before


def test_quantize_copies_only_known_files_and_lists_them(model_copy, tmp_path) -> None:
    home = model_copy.parent
    (home / "secret.txt").write_text("do not ship", encoding="utf-8")
    (home / "docs").mkdir()
    (home / "docs" / "notes.md").write_text("private", encoding="utf-8")
    before = {p: digest(p) for p in home.iterdir() if p.is_file()}
    result = runner.invoke(app, ["quantize", str(model_copy), "--out", str(home / "int8")])  # beside the model: allowed
    assert result.exit_code == 0, result.output
    shipped = {p.name for p in (home / "int8").iterdir()}
    assert "secret.txt" not in shipped and "docs" not in shipped
    manifest = json.loads((home / "int8" / "manifest.json").read_text())
    assert {"config.json", "tokenizer.json"} <= set(manifest["copied_from_source"]) <= shipped
    assert "secret.txt" not in manifest["copied_from_source"]
    assert {p: digest(p) for p in home.iterdir() if p.is_file()} == before
    one_error(runner.invoke(app, ["quantize", str(model_copy), "--out", str(home)]))  # the input's own folder


def test_outputs_get_the_users_umask(model_copy, tmp_path) -> None:
    old = os.umask(0o022)
    try:
        result = runner.invoke(app, ["check", str(model_copy), "--latency-ms", "10000", "--json",
                                     str(tmp_path / "v.json"), *FAST])
        assert result.exit_code == 0, result.output
        assert stat.S_IMODE((tmp_path / "v.json").stat().st_mode) == 0o644
        result = runner.invoke(app, ["quantize", str(model_copy), "--out", str(tmp_path / "q")])
        assert result.exit_code == 0, result.output
        assert stat.S_IMODE((tmp_path / "q").stat().st_mode) == 0o755
    finally:
        os.umask(old)


def test_remote_code_pointers_are_dropped_from_pruned_outputs(tiny_bert_dir, tmp_path) -> None:
    source = tmp_path / "remote"
    source.mkdir()
    for item in tiny_bert_dir.iterdir():
        (source / item.name).write_bytes(item.read_bytes())
    config = json.loads((source / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "someone/repo--modeling.Model"}
    (source / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = runner.invoke(app, ["prune", str(source), "--out", str(tmp_path / "p"), "--keep-flops", "0.5",
                                 "--criterion", "magnitude", "--recover", "none"])
    assert result.exit_code == 0, result.output
    assert "auto_map" not in json.loads((tmp_path / "p" / "config.json").read_text())
    assert "auto_map" in json.loads((source / "config.json").read_text())  # the input is untouched


def test_a_huge_profile_is_refused_at_once(tmp_path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("name: x\n" + "# padding\n" * 40_000, encoding="utf-8")
    assert "KB" in one_error(runner.invoke(app, ["profiles", "validate", str(path)]))


def test_a_fixed_batch_model_quantizes(tmp_path) -> None:
    """A model exported with batch 1 fixed: the quantization checks run at its batch instead of crashing."""
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    path = tmp_path / "m" / "fixed.onnx"
    path.parent.mkdir()
    torch.onnx.export(module, (torch.randn(1, 16),), str(path), input_names=["x"], dynamo=False)
    result = runner.invoke(app, ["quantize", str(path), "--out", str(tmp_path / "q")])
    assert result.exit_code == 0, result.output
    assert "synthetic inputs" in result.stdout  # said loudly: no real calibration data was there
    line = one_error(runner.invoke(app, ["profile", str(path), "--batch", "2", "--runs", "2"]))
    assert "fixed batch of 1" in line

"""Bad input, table-driven: each case builds its fixture, runs one command, and must end in exit 2, exactly one
``error:`` line that names the cause, nothing written, and every input byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeprune.cli import app

runner = CliRunner()
FAST = ["--runs", "2", "--seq-len", "16", "--threads", "1"]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _bert(t: Path, d: Path) -> Path:
    return _copy(d, t / "bert")


def _corrupt_weights(t: Path, d: Path) -> Path:
    model = _bert(t, d)
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    return model


def _truncated_weights(t: Path, d: Path) -> Path:
    model = _bert(t, d)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    return model


def _config(t: Path, d: Path, **changes: object) -> Path:
    model = _bert(t, d)
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return model


def _plan(t: Path, d: Path, text: str) -> Path:
    model = _bert(t, d)
    (model / "pruning_plan.json").write_text(text, encoding="utf-8")
    (model / "model.safetensors").unlink()
    return model


def _onnx_file(t: Path, data: bytes) -> Path:
    path = t / "bad" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(data)
    return path


def _unknown_op(t: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("FooBar", ["x"], ["y"], domain="custom.x")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = t / "op" / "model.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.x", 1)]),
              path)
    return path


def _profile(t: Path, mutate: Callable[[dict], None] | None = None, text: str | None = None) -> Path:
    import yaml

    from edgeprune.devices import load_profile

    path = t / "profile.yaml"
    if text is None:
        data = yaml.safe_load(load_profile("rpi5").to_yaml())
        if mutate:
            mutate(data)
        text = yaml.safe_dump(data)
    path.write_text(text, encoding="utf-8")
    return path


_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
"""Billion laughs: nine levels of nine aliases each, 9^9 strings once expanded."""


def _clock(value: object) -> Callable[[dict], None]:
    return lambda d: d["cpu"]["clusters"][0]["max_clock"].update(value=value)


def _text(t: Path, data: bytes, name: str = "calib.txt") -> Path:
    path = t / name
    path.write_bytes(data)
    return path


def _foreign_dir(t: Path) -> Path:
    folder = t / "someone-elses"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work", encoding="utf-8")
    return folder


def _read_only_dir(t: Path) -> Path:
    """A folder nobody can write in, root included (tests and CI run as root, whom chmod does not stop)."""
    return Path("/sys")


# (id, build argv from (tmp, tiny_bert_dir, tiny_onnx), words the error line must contain)
CASES: list[tuple[str, Callable[[Path, Path, Path], list[str]], str]] = [
    ("missing model dir", lambda t, d, m: ["prune", str(t / "nope"), "--out", str(t / "o"), "--keep-flops", "0.5"],
     "does not exist"),
    ("empty model dir", lambda t, d, m: ["prune", str(_mk(t / "empty")), "--out", str(t / "o"), "--keep-flops",
                                         "0.5"], "config.json"),
    ("onnx file given to prune", lambda t, d, m: ["prune", str(m), "--out", str(t / "o"), "--keep-flops", "0.5"],
     "is a file"),
    ("random bytes as weights", lambda t, d, m: ["prune", str(_corrupt_weights(t, d)), "--out", str(t / "o"),
                                                 "--keep-flops", "0.8"], "weights"),
    ("truncated weights", lambda t, d, m: ["prune", str(_truncated_weights(t, d)), "--out", str(t / "o"),
                                           "--keep-flops", "0.8"], "weights"),
    ("config not JSON", lambda t, d, m: ["prune", str(_config_text(t, d, "{not json")), "--out", str(t / "o"),
                                         "--keep-flops", "0.5"], "not valid JSON"),
    ("unsupported architecture gpt2", lambda t, d, m: ["prune", str(_config(t, d, model_type="gpt2")), "--out",
                                                       str(t / "o"), "--keep-flops", "0.5"], "no pruning adapter"),
    ("unsupported architecture t5", lambda t, d, m: ["export", str(_config(t, d, model_type="t5")), "--out",
                                                     str(t / "o")], "no pruning adapter"),
    ("plan not JSON", lambda t, d, m: ["export", str(_plan(t, d, "{")), "--out", str(t / "o")], "not valid JSON"),
    ("plan naming more heads", lambda t, d, m: ["export", str(_plan(t, d, _plan_json(heads=[0, 99]))), "--out",
                                                str(t / "o")], "out of range"),
    ("plan of another model", lambda t, d, m: ["export", str(_plan(t, d, _plan_json(layers=5))), "--out",
                                               str(t / "o")], "layers"),
    ("plan with an old format", lambda t, d, m: ["export", str(_plan(t, d, _plan_json(version=0))), "--out",
                                                 str(t / "o")], "format version"),
    ("empty onnx", lambda t, d, m: ["check", str(_onnx_file(t, b"")), "--latency-ms", "5"], "not a loadable"),
    ("random onnx", lambda t, d, m: ["check", str(_onnx_file(t, os.urandom(2000))), "--latency-ms", "5"],
     "not a loadable"),
    ("truncated onnx", lambda t, d, m: ["quantize", str(_onnx_file(t, m.read_bytes()[:5000])), "--out",
                                        str(t / "q")], "not a loadable"),
    ("onnx op onnxruntime lacks", lambda t, d, m: ["profile", str(_unknown_op(t))], "not a loadable"),
    ("profile clock 0", lambda t, d, m: ["profiles", "validate", str(_profile(t, _clock(0)))], "max_clock"),
    ("profile clock inf", lambda t, d, m: ["profiles", "validate", str(_profile(t, _clock(float("inf"))))],
     "max_clock"),
    ("profile clock NaN", lambda t, d, m: ["profiles", "validate", str(_profile(t, _clock(float("nan"))))],
     "max_clock"),
    ("profile clock negative", lambda t, d, m: ["profiles", "validate", str(_profile(t, _clock(-1)))], "max_clock"),
    ("profile wrong unit", lambda t, d, m: ["profiles", "validate", str(_profile(
        t, lambda x: x["cpu"]["clusters"][0]["max_clock"].update(unit="GB/s")))], "max_clock"),
    ("profile unknown field", lambda t, d, m: ["profiles", "validate", str(_profile(t, lambda x: x.update(turbo=1)))],
     "turbo"),
    ("profile missing source", lambda t, d, m: ["profiles", "validate", str(_profile(
        t, lambda x: x["cpu"]["clusters"][0]["max_clock"].pop("source")))], "source"),
    ("profile YAML syntax", lambda t, d, m: ["profiles", "validate", str(_profile(t, text="name: [unclosed"))],
     "not valid YAML"),
    ("profile not a mapping", lambda t, d, m: ["profiles", "validate", str(_profile(t, text="- a\n- b\n"))],
     "mapping"),
    ("profile alias bomb", lambda t, d, m: ["profiles", "validate", str(_profile(t, text=_BOMB))], "aliases"),
    ("profile binary", lambda t, d, m: ["profiles", "validate", str(_text(t, os.urandom(500), "p.yaml"))], "profile"),
    ("profile used by check", lambda t, d, m: ["check", str(m), "--profile", str(_profile(t, _clock(0))),
                                               "--latency-ms", "5"], "max_clock"),
    ("unknown profile name", lambda t, d, m: ["check", str(m), "--profile", "pixel-99", "--latency-ms", "5"],
     "pixel-99"),
    ("empty calibration file", lambda t, d, m: ["prune", str(d), "--out", str(t / "o"), "--keep-flops", "0.5",
                                                "--calibration", str(_text(t, b""))], "has no text"),
    ("binary calibration file", lambda t, d, m: ["prune", str(d), "--out", str(t / "o"), "--keep-flops", "0.5",
                                                 "--calibration", str(_text(t, os.urandom(3000)))], "UTF-8"),
    ("one-line calibration with lstsq", lambda t, d, m: ["prune", str(d), "--out", str(t / "o"), "--keep-flops",
                                                         "0.5", "--calibration", str(_text(t, b"one line\n"))],
     "calibration"),
    ("missing calibration file", lambda t, d, m: ["prune", str(d), "--out", str(t / "o"), "--keep-flops", "0.5",
                                                  "--calibration", str(t / "none.txt")], "calibration"),
    ("impossible budget: nothing given", lambda t, d, m: ["check", str(m)], "no budget"),
    ("zero threads", lambda t, d, m: ["profile", str(m), "--threads", "0"], "--threads"),
    ("huge sequence", lambda t, d, m: ["check", str(m), "--latency-ms", "5", "--seq-len", "100000"], "positions"),
    ("output is the input dir", lambda t, d, m: ["prune", str(d), "--out", str(d), "--keep-flops", "0.5"],
     "overlaps the input"),
    ("output inside the input dir", lambda t, d, m: ["export", str(d), "--out", str(d / "onnx")],
     "overlaps the input"),
    ("output is someone else's folder", lambda t, d, m: ["quantize", str(m), "--out", str(_foreign_dir(t))],
     "not written by edgeprune"),
    ("output folder not writable", lambda t, d, m: ["quantize", str(m), "--out", str(_read_only_dir(t) / "q")],
     "cannot write"),
    ("json into a read-only folder", lambda t, d, m: ["check", str(m), "--latency-ms", "1000", *FAST, "--json",
                                                      str(_read_only_dir(t) / "v.json")], "cannot write"),
    ("output parent is a file", lambda t, d, m: ["quantize", str(m), "--out", str(_text(t, b"x", "f") / "q")],
     "cannot write"),
    ("calibrate --measure without =", lambda t, d, m: ["calibrate", "rpi5", "--measure", str(m), "--out",
                                                       str(t / "c.yaml")], "MODEL.onnx=LATENCY_MS"),
    ("calibrate with a non-number", lambda t, d, m: ["calibrate", "rpi5", "--measure", f"{m}=fast", "--out",
                                                     str(t / "c.yaml")], "neither a latency"),
]


def _mk(path: Path) -> Path:
    path.mkdir()
    return path


def _config_text(t: Path, d: Path, text: str) -> Path:
    model = _bert(t, d)
    (model / "config.json").write_text(text, encoding="utf-8")
    return model


def _plan_json(heads: list[int] | None = None, layers: int = 3, version: int = 1) -> str:
    layer = {"heads": heads or [0, 1], "neurons": [0, 1, 2]}
    return json.dumps({"format_version": version, "layers": [layer] * layers, "criterion": "magnitude",
                       "dense": {"num_layers": layers, "num_heads": 6, "head_dim": 8, "ffn_dim": 96}})


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and os.access(p, os.R_OK)}


def test_the_suite_has_enough_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(("case", "argv", "words"), CASES, ids=[c for c, _, _ in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, argv, words, tmp_path, tiny_bert_dir, tiny_onnx) -> None:
    work = tmp_path / "w"
    work.mkdir()
    args = argv(work, tiny_bert_dir, tiny_onnx)
    before = _snapshot(work), _snapshot(tiny_bert_dir), _snapshot(tiny_onnx.parent)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, f"{case}: {result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and " — " in lines[0], result.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert (_snapshot(work), _snapshot(tiny_bert_dir), _snapshot(tiny_onnx.parent)) == before

"""``optimize --tokens-per-s`` for decoders: the secant step of the search, and the pipeline end to end on a tiny
Llama (structure and exit codes only: a tiny model's decode timings on a shared machine decide nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeprune.cli import EXIT_BAD_INPUT, EXIT_FAIL, app
from edgeprune.search.decode import MIN_KEEP, next_keep


def test_next_keep_goes_through_the_origin_then_along_the_secant() -> None:
    assert next_keep([(1.0, 20.0)], 15.0) == pytest.approx(0.75)  # all of it shrinks: 15/20
    # the line through (1, 20) and (0.75, 17) meets 15 ms at 0.75 - 2/12
    assert next_keep([(1.0, 20.0), (0.75, 17.0)], 15.0) == pytest.approx(0.583, abs=1e-3)
    assert next_keep([(1.0, 20.0), (0.75, 17.0)], 1.0) == MIN_KEEP  # the floor
    assert next_keep([(1.0, 20.0)], 30.0) == 1.0  # the dense model is fast enough
    assert next_keep([(1.0, 20.0), (0.5, 21.0)], 15.0) == pytest.approx(0.75)  # a non-falling line: back to the origin


def test_an_unmeetable_tokens_budget_fails_with_the_closest_result(tiny_decoder_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["optimize", str(tiny_decoder_dir), "--tokens-per-s", "1e9", "--out", str(out),
                                      "--criterion", "magnitude", "--recover", "none", "--seq-len", "8",
                                      "--new-tokens", "4", "--runs", "8"])
    assert result.exit_code == EXIT_FAIL, result.output
    run = json.loads((out / "run.json").read_text())
    search = run["stages"]["decode_search"]
    assert search["chosen_keep_flops"] is None and len(search["candidates"]) == 1  # the floor, then no new point
    assert search["candidates"][0]["keep_flops"] == MIN_KEEP and not search["candidates"][0]["met"]
    assert "keep 0.20: " in result.output, result.output
    line = next(v for v in run["verdicts"] if v["metric"] == "decode_tokens_per_s")
    assert line["status"] in ("FAIL", "UNCERTAIN") and line["budget"] == 1e9
    assert [row["name"] for row in run["models"]][:2] == ["dense fp32", "pruned fp32"]
    assert all(row["generation"]["new_tokens"] == 4 for row in run["models"])
    assert not (out / "search").exists()
    report = json.loads((out / "report.json").read_text())
    assert all(m["tokens_per_s"] > 0 and m["decode_ms_per_token"] > 0 for m in report["models"])
    for name in ("report.md", "report.html"):
        assert "tokens/s" in (out / name).read_text(), name


def test_a_tokens_budget_on_an_encoder_is_refused_before_any_work(tiny_bert_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["optimize", str(tiny_bert_dir), "--tokens-per-s", "10",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "decoder budget" in result.output and not (tmp_path / "run").exists()

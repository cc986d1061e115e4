"""Fuzzing the parsers: no input makes them raise anything but edgeprune's own error types."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeprune.budgets import Budget
from edgeprune.devices import load_profile, parse_profile
from edgeprune.errors import EdgepruneError
from edgeprune.models.plan import PruningPlan
from edgeprune.options import PruneOptions, check_measurement
from edgeprune.profiling.calibrate import read_latency

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                               max_size=4), max_leaves=20)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _raises_only_ours(call, *args, **kwargs) -> None:
    """Call; edgeprune's own errors are the allowed outcome of bad input, anything else fails the test."""
    with contextlib.suppress(EdgepruneError):
        call(*args, **kwargs)


@FUZZ
@given(text=st.text(max_size=300))
def test_any_profile_text(text, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    _raises_only_ours(parse_profile, path)


@FUZZ
@given(path=st.lists(st.sampled_from(["cpu", "clusters", 0, "max_clock", "memory", "capacity", "runtime",
                                      "threads", "value", "unit", "kind", "source", "name", "calibration"]),
                     min_size=1, max_size=5),
       value=JSON)
def test_a_valid_profile_with_any_one_field_replaced(path, value, tmp_path: Path) -> None:
    data = yaml.safe_load(load_profile("rpi5").to_yaml())
    node = data
    for key in path[:-1]:
        in_dict = isinstance(node, dict) and key in node
        if in_dict or isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
    if isinstance(node, dict):
        node[path[-1] if isinstance(path[-1], str) else "x"] = value
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    _raises_only_ours(parse_profile, file)


@FUZZ
@given(text=st.text(max_size=300))
def test_any_plan_text(text) -> None:
    _raises_only_ours(PruningPlan.from_json, text)


@FUZZ
@given(data=JSON, layers=st.lists(JSON, max_size=3))
def test_any_plan_structure(data, layers) -> None:
    plan = {"format_version": 1, "criterion": "magnitude", "layers": layers,
            "dense": data if isinstance(data, dict) else {"num_layers": data, "num_heads": 2, "head_dim": 4,
                                                          "ffn_dim": 8}}
    _raises_only_ours(PruningPlan.from_json, json.dumps(plan, allow_nan=True))


NUMBERS = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**6)


@FUZZ
@given(latency=NUMBERS, memory=NUMBERS, percentile=st.text(max_size=5) | st.sampled_from(["p50", "p90", "p99"]))
def test_any_budget(latency, memory, percentile) -> None:
    try:
        budget = Budget(latency_ms=latency, memory_mb=memory, percentile=percentile)
    except EdgepruneError:
        return
    for value in (budget.latency_ms, budget.memory_mb):
        assert value is None or (math.isfinite(value) and value > 0)


@FUZZ
@given(criterion=st.text(max_size=10), decay=st.floats(allow_nan=True, allow_infinity=True),
       steps=st.integers(-10, 10), batch=st.integers(-10, 10))
def test_any_pruning_options(criterion, decay, steps, batch) -> None:
    _raises_only_ours(PruneOptions, criterion=criterion, ema_decay=decay, distill_steps=steps, batch_size=batch)


@FUZZ
@given(counts=st.tuples(st.none() | st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3)))
def test_any_measurement_counts(counts) -> None:
    _raises_only_ours(check_measurement, *counts)


@FUZZ
@given(value=st.text(max_size=30))
def test_any_measured_latency(value) -> None:
    try:
        latency = read_latency(value)
    except EdgepruneError:
        return
    assert math.isfinite(latency) and latency > 0

"""Measured and predicted results answer the same questions, and budgets judge either without asking which it is
(hand-made results: no timing in these tests)."""

from __future__ import annotations

import pytest

from edgeprune.budgets import FAIL, PASS, UNCERTAIN, Budget, verdicts
from edgeprune.errors import ProfileError
from edgeprune.profiling import Estimate, Measurement, MemoryStats, Prediction, ProfileResult
from edgeprune.profiling.measure import LatencyStats


def _measurement(memory: bool = True) -> Measurement:
    """p50 10.5 ms, p90 18.1 ms; 40 MiB over the baseline."""
    return Measurement(model="m.onnx", profile="host", size_mb=12.0, threads=1, batch=1, seq_len=16,
                       latency_stats=LatencyStats([float(ms) for ms in range(1, 21)]),
                       memory_stats=MemoryStats(100.0, 140.0, 120.0) if memory else None, host={}, versions={})


def _estimate(memory: bool = True) -> Estimate:
    """20 ms ± 25% at the median, the host's p90/p50 tail (18.1 / 10.5) on top."""
    prediction = Prediction(device="rpi5", threads=4, latency_ms=20.0, band=0.25, basis=["same ISA family: ±25%"])
    return Estimate(device="rpi5", threads=4, prediction=prediction, host=_measurement(memory))


@pytest.mark.parametrize("result", [_measurement(), _estimate()], ids=["measured", "predicted"])
def test_both_results_answer_the_same_questions(result: ProfileResult) -> None:
    for percentile in ("p50", "p90", "p99"):
        value, low, high = result.latency(percentile)
        assert 0 < low <= value <= high
    value, low, high = result.memory()
    assert low <= value <= high and value == pytest.approx(40.0)
    assert result.device in ("host", "rpi5") and result.size_mb == 12.0 and result.threads >= 1
    assert result.predicted == bool(result.basis)
    assert {"latency_ms", "threads"} <= result.to_dict().keys()


def test_a_measurement_has_no_band_and_a_prediction_has_its_own() -> None:
    measured, predicted = _measurement(), _estimate()
    assert measured.latency("p90") == (pytest.approx(18.1),) * 3 and not measured.predicted
    value, low, high = predicted.latency("p50")
    assert (value, low, high) == (pytest.approx(20.0), pytest.approx(15.0), pytest.approx(25.0))
    assert predicted.latency("p90")[0] == pytest.approx(20.0 * 18.1 / 10.5) and predicted.predicted


@pytest.mark.parametrize("result", [_measurement(memory=False), _estimate(memory=False)],
                         ids=["measured", "predicted"])
def test_memory_not_measured_is_a_profile_error(result: ProfileResult) -> None:
    with pytest.raises(ProfileError, match="without memory"):
        result.memory()
    with pytest.raises(ProfileError):
        verdicts(result, Budget(memory_mb=100))


def test_to_dict_keys_stay_as_reports_read_them() -> None:
    assert set(_measurement().to_dict()) == {"model", "profile", "size_mb", "threads", "batch", "seq_len",
                                             "latency_ms", "memory_mb", "generation", "host", "host_health", "versions"}
    assert set(_estimate().to_dict()) == {"device", "threads", "predicted", "latency_ms", "host_basis", "memory_mb"}


@pytest.mark.parametrize("result, budget_ms, status", [
    (_measurement(), 18.2, PASS), (_measurement(), 18.0, FAIL),
    (_estimate(), 25.0 * 18.1 / 10.5 + 0.01, PASS), (_estimate(), 15.0 * 18.1 / 10.5 - 0.01, FAIL),
    (_estimate(), 20.0 * 18.1 / 10.5, UNCERTAIN),
], ids=["measured-pass", "measured-fail", "predicted-pass", "predicted-fail", "predicted-uncertain"])
def test_verdicts_judge_the_band_whatever_the_result(result: ProfileResult, budget_ms: float, status: str) -> None:
    latency, memory = verdicts(result, Budget(latency_ms=budget_ms, memory_mb=50))
    assert latency.status == status and latency.metric == "latency_p90" and latency.profile == result.device
    assert memory.status == PASS and memory.value == pytest.approx(40.0)
    assert latency.predicted == memory.predicted == result.predicted
    line = latency.to_dict()
    assert line["predicted"] == result.predicted and ("low" in line) == ("high" in line) == result.predicted


def test_a_measurement_is_never_uncertain() -> None:
    value = _measurement().latency("p90")[0]
    assert [line.status for line in verdicts(_measurement(), Budget(latency_ms=value))] == [PASS]
    assert [line.status for line in verdicts(_measurement(), Budget(latency_ms=value * 0.999))] == [FAIL]


def test_a_predicted_memory_band_reaches_down_to_the_releasing_allocators_peak() -> None:
    """40 MiB with glibc's default allocator, 28 MiB with one that frees at once: the device may run either."""
    host = _measurement()
    host.memory_stats = MemoryStats(100.0, 140.0, 120.0, released_over_baseline_mb=28.0)
    estimate = Estimate(device="rpi5", threads=4, prediction=_estimate().prediction, host=host)
    assert estimate.memory() == (pytest.approx(40.0), pytest.approx(28.0 * 0.85), pytest.approx(40.0 * 1.15))
    assert host.memory() == (pytest.approx(40.0),) * 3  # measured here: the default allocator's figure, no band
    line = verdicts(estimate, Budget(memory_mb=30))[0]
    assert line.status == UNCERTAIN and line.reason == "the predicted band straddles the budget"
    assert MemoryStats.from_dict(host.memory_stats.to_dict()) == host.memory_stats
    old = {k: v for k, v in host.memory_stats.to_dict().items() if k != "released_over_baseline_mb"}
    assert MemoryStats.from_dict(old).released_over_baseline_mb is None  # figures recorded before it was measured

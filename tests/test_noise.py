"""Measurements that know when they cannot be trusted: a simulated noisy host (a seeded heavy-tailed timer) and a
real one (busy processes competing for the cores) must turn PASS into UNCERTAIN, never into a lucky PASS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprune.budgets import PASS, UNCERTAIN, Budget, check, verdicts
from edgeprune.profiling import health, measure
from edgeprune.profiling.health import QUIET, HostHealth, Sharing
from edgeprune.profiling.measure import LatencyStats, StabilityRules, compare_latency, speedup_interval, spread_reasons
from edgeprune.quantization import timing_notes

DENSE_MS, PRUNED_MS = 10.0, 4.0
QUIET_HEALTH = HostHealth(verdict=QUIET, reasons=[], probe_ms=10.0, baseline_ms=10.0, sharing=Sharing(0.0, 0.0),
                          load_1min=0.1, cpus=2)


class SimulatedHost:
    """A clock and sessions whose runs take a model's fixed time, times seeded noise: ``quiet`` jitters by ~2%,
    ``noisy`` adds heavy-tailed stalls (Pareto, as a throttling hypervisor does) to a third of the runs."""

    def __init__(self, noisy: bool, seed: int = 0) -> None:
        self.now, self.noisy, self.rng = 0.0, noisy, np.random.default_rng(seed)

    def clock(self) -> float:
        return self.now

    def session(self, path: Path, **_options: object) -> SimulatedHost.Session:
        return self.Session(self, DENSE_MS if "dense" in str(path) else PRUNED_MS)

    class Session:
        def __init__(self, host: SimulatedHost, ms: float) -> None:
            self.host, self.ms = host, ms

        def run(self, _outputs: object, _inputs: object) -> None:
            rng = self.host.rng
            factor = 1 + abs(rng.normal(0, 0.02))
            if self.host.noisy and rng.random() < 1 / 3:
                factor += 3 * rng.pareto(1.5)
            self.host.now += self.ms * factor / 1e3


@pytest.fixture
def simulated(monkeypatch: pytest.MonkeyPatch):
    """Install a simulated host; CPU-sharing windows and the host probe are left out (they read the real host)."""
    def install(noisy: bool) -> SimulatedHost:
        host = SimulatedHost(noisy)
        monkeypatch.setattr(measure, "clock", host.clock)
        monkeypatch.setattr(measure.runtime, "session", host.session)
        monkeypatch.setattr(measure.runtime, "synthetic_feed", lambda *_args: {})
        monkeypatch.setattr(health, "snapshot", lambda: None)
        monkeypatch.setattr("edgeprune.profiling.check_health", lambda: QUIET_HEALTH)
        monkeypatch.setattr("edgeprune.profiling.runtime.check_seq_len", lambda *_args: None)
        monkeypatch.setattr("edgeprune.profiling.runtime.takes_cache", lambda *_args: False)
        return host
    return install


def test_a_model_within_budget_passes_quiet_and_is_uncertain_on_a_noisy_host(simulated, tmp_path) -> None:
    model = tmp_path / "pruned.onnx"
    model.write_bytes(b"simulated")
    budget = Budget(latency_ms=PRUNED_MS * 1.5, percentile="p90")

    simulated(noisy=False)
    quiet_lines, quiet = check(model, "host", budget, runs=100)
    assert [line.status for line in quiet_lines] == [PASS] and quiet.timing_doubts == []

    host = simulated(noisy=True)
    start = host.now
    noisy_lines, noisy = check(model, "host", budget, runs=100)
    line = noisy_lines[0]
    assert line.status == UNCERTAIN and ("CV" in line.reason or "p90/p50" in line.reason)
    stability = noisy.latency_stats.stability
    assert not stability.stable and stability.remeasured_rounds > 0  # re-measured before giving up
    # the time budget bounds the re-measuring (a round may overrun it by its own length)
    assert measure.RULES.remeasure_s / 2 < stability.remeasure_s < 1.5 * measure.RULES.remeasure_s
    assert host.now - start < 2 * measure.RULES.remeasure_s
    assert line.to_dict()["reason"] == line.reason


def test_the_speedup_interval_on_a_noisy_host_covers_the_quiet_speedup(simulated) -> None:
    paths = [Path("dense.onnx"), Path("pruned.onnx")]
    simulated(noisy=False)
    dense, pruned = compare_latency(paths, 1, rounds=4, runs=25)
    quiet_speedup = dense.p50 / pruned.p50
    assert quiet_speedup == pytest.approx(DENSE_MS / PRUNED_MS, rel=0.03)
    low, high = speedup_interval(dense, pruned)
    assert low <= quiet_speedup <= high and high - low < 0.1 * quiet_speedup  # quiet: a tight interval

    simulated(noisy=True)
    dense, pruned = compare_latency(paths, 1, rounds=4, runs=25)
    assert dense.doubts and pruned.doubts
    low, high = speedup_interval(dense, pruned)
    assert low <= quiet_speedup <= high


def test_a_transient_stall_is_remeasured_away(simulated, monkeypatch) -> None:
    """Noise in the first round only: the re-measured latest rounds are stable and judged alone."""
    host = simulated(noisy=True)
    rounds_done = []
    original = measure._round

    def calmer(*args, **kwargs):
        rounds_done.append(1)
        host.noisy = len(rounds_done) == 1
        return original(*args, **kwargs)

    monkeypatch.setattr(measure, "_round", calmer)
    (stats,) = compare_latency([Path("pruned.onnx")], 1, rounds=3, runs=30)
    assert stats.stability.stable and stats.stability.remeasured_rounds >= 1
    assert stats.p90 < PRUNED_MS * 1.1


def test_spread_rules() -> None:
    rng = np.random.default_rng(0)
    assert spread_reasons(10 + rng.normal(0, 0.3, 200)) == []
    stalled = np.concatenate([np.full(150, 10.0), np.full(50, 40.0)])
    assert any("p90/p50" in r for r in spread_reasons(stalled))
    assert spread_reasons([0.05, 0.05, 0.06, 0.3, 0.05]) == []  # sub-floor jitter on a tiny model is not noise
    strict = StabilityRules(max_cv=0.01, max_tail=1.01, floor_ms=0.0)
    assert spread_reasons(10 + rng.normal(0, 0.3, 200), strict)


def test_warm_up_stops_when_the_median_settles(simulated) -> None:
    simulated(noisy=False)
    (stats,) = compare_latency([Path("pruned.onnx")], 1, rounds=1, runs=5, warmup=100)
    assert stats.stability.warmup_runs == 2 * measure.WARMUP_CHUNK  # settled after two chunks, not 100 runs


def test_memory_lines_and_predictions_follow_the_timing_doubts(simulated, tmp_path) -> None:
    """Memory does not depend on timing noise; a budget derived from an untrustworthy measurement is itself
    untrustworthy."""
    model = tmp_path / "pruned.onnx"
    model.write_bytes(b"simulated")
    simulated(noisy=False)
    _, quiet = check(model, "host", Budget(latency_ms=100), runs=20)
    lines = verdicts(quiet, Budget(latency_ms=100), budget_doubts=["derived from an unstable dense p90"])
    assert lines[0].status == UNCERTAIN and "derived" in lines[0].reason

    class Noisy:
        timing_doubts, device, predicted = ["latency CV 80% > 25%"], "host", False

        def latency(self, _percentile: str) -> tuple[float, float, float]:
            return 5.0, 5.0, 5.0

        def memory(self) -> tuple[float, float, float]:
            return 10.0, 10.0, 10.0

    memory_line, latency_line = (verdicts(Noisy(), Budget(latency_ms=100, memory_mb=50))[i] for i in (1, 0))
    assert memory_line.status == PASS and latency_line.status == UNCERTAIN


def test_quantization_reports_a_tie_within_noise() -> None:
    rng = np.random.default_rng(0)

    def stats(ms: float, sd: float) -> LatencyStats:
        rounds = [list(ms + rng.normal(0, sd, 20)) for _ in range(4)]
        return LatencyStats([x for r in rounds for x in r], rounds=rounds)

    fp32 = stats(10, 1.5)
    assert any("tie within timing noise" in note for note in timing_notes({"fp32": fp32, "int8": stats(9.8, 1.5)},
                                                                            "int8"))
    assert timing_notes({"fp32": fp32, "int8": stats(5, 0.05)}, "int8") == []


@pytest.fixture
def busy_host():
    """Real competition: one busy process per core this process may use."""
    cores = len(os.sched_getaffinity(0))
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    yield
    for p in procs:
        p.kill()
        p.wait()


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="CPU sharing is read from Linux's /proc/stat")
def test_a_real_competing_load_is_seen(busy_host, tiny_onnx, tmp_path) -> None:
    state = health.check_health(tmp_path)
    assert state.verdict != QUIET and state.sharing.others_busy > health.MAX_OTHERS_BUSY
    quick = StabilityRules(remeasure_s=2.0)
    (stats,) = compare_latency([tiny_onnx], 1, rounds=2, runs=20, seq_len=16, rules=quick)
    assert any("while timing, other processes" in r for r in stats.doubts)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="CPU sharing is read from Linux's /proc/stat")
def test_check_and_doctor_under_a_real_load_say_uncertain(busy_host, tiny_onnx, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from edgeprune.cli import app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(measure, "RULES", StabilityRules(remeasure_s=2.0))  # the load stays: give up sooner
    runner = CliRunner()
    result = runner.invoke(app, ["check", str(tiny_onnx), "--latency-ms", "10000", "--runs", "20", "--seq-len", "16",
                                 "--json", str(tmp_path / "check.json")])
    assert result.exit_code == 1, result.output
    data = json.loads((tmp_path / "check.json").read_text())
    assert data["verdicts"][0]["status"] == UNCERTAIN and "other processes" in data["verdicts"][0]["reason"]
    assert data["measurement"]["host_health"]["verdict"] != QUIET
    doctor = runner.invoke(app, ["doctor", "--json", str(tmp_path / "doctor.json")])
    assert doctor.exit_code == 1 and "UNCERTAIN" in doctor.output
    assert json.loads((tmp_path / "doctor.json").read_text())["health"]["verdict"] != QUIET


def test_doctor_on_this_host_reports_its_findings(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from edgeprune.cli import app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["doctor", "--json", str(tmp_path / "doctor.json")])
    assert result.exit_code in (0, 1) and "probe:" in result.output and "cpu:" in result.output
    data = json.loads((tmp_path / "doctor.json").read_text())
    assert data["health"]["verdict"] in ("quiet", "noisy", "throttled") and data["health"]["probe_ms"] > 0
    assert data["health"]["baseline_ms"] is None  # a fresh cache: the first look has nothing to compare with
    assert list(tmp_path.glob("edgeprune/host-probe-*.json")) or result.exit_code == 1

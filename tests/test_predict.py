"""Latency prediction from per-operator costs, on synthetic host rates (no timing in these tests)."""

from __future__ import annotations

import pytest

from edgeprune.profile.characterize import GemmRate, HostRates
from edgeprune.profile.devices import detect_host, load_profile
from edgeprune.profile.operators import OperatorProfile, OpTiming
from edgeprune.profile.predict import predict_latency


def _rates(threads: int) -> HostRates:
    """A host whose GEMMs and bandwidth scale perfectly with threads, small GEMMs at a third of the rate."""
    gemm = [GemmRate(16, 64, 64, 30.0 * threads, 60.0 * threads),
            GemmRate(128, 384, 1536, 100.0 * threads, 300.0 * threads)]
    return HostRates(threads=threads, gemm=gemm, bandwidth_gbs=20.0 * threads, call_overhead_us=4.0)


def _ops(threads: int = 1) -> OperatorProfile:
    work = 2.0 * 128 * 384 * 1536
    ops = [OpTiming("ffn", "MatMul", "gemm_fp32", work, 3e6, ms=work / 100e9 * 1e3 / threads),
           OpTiming("ffn_q", "MatMulIntegerToFloat", "gemm_int8", work, 1e6, ms=work / 300e9 * 1e3 / threads),
           OpTiming("gelu", "Gelu", "memory", 2e5, 8 * 2**20, ms=8 * 2**20 / 20e9 * 1e3 / threads),
           OpTiming("shape", "Shape", "tiny", 1, 16, ms=0.004)]
    kernels = sum(op.ms for op in ops)
    return OperatorProfile(ops=ops, wall_ms=kernels + 0.1, threads=threads, batch=1, seq_len=128)


def test_host_prediction_follows_measured_thread_scaling() -> None:
    host = detect_host()
    one = predict_latency(_ops(1), host.model_copy(update={"runtime": host.runtime.model_copy(
        update={"threads": 1})}), threads=1, host=host, rates=_rates)
    two = predict_latency(_ops(1), host, threads=2, host=host, rates=_rates) if host.cpu.cores >= 2 else None
    assert one.latency_ms == pytest.approx(_ops(1).wall_ms) and one.band == 0.05
    if two is not None:
        assert two.band == 0.10
        # GEMM and DRAM-bound time halves; bookkeeping and runtime time do not
        assert two.latency_ms == pytest.approx(0.004 + 0.1 + (_ops(1).kernel_ms - 0.004) / 2)


def test_measured_latency_rescales_the_profiled_one() -> None:
    host = detect_host()
    ops = _ops(1)
    p = predict_latency(ops, host, threads=1, host=host, rates=_rates, measured_ms=ops.wall_ms / 2)
    assert p.latency_ms == pytest.approx(ops.wall_ms / 2)


def test_band_is_wider_across_isa_families_and_with_assumed_figures() -> None:
    host = detect_host()
    same_arch = "x86-avx512-vnni-server" if host.cpu.arch == "x86_64" else "rpi5"
    other_arch = "rpi5" if host.cpu.arch == "x86_64" else "x86-avx512-vnni-server"
    near = predict_latency(_ops(), load_profile(same_arch), host=host, rates=_rates)
    far = predict_latency(_ops(), load_profile(other_arch), host=host, rates=_rates)
    here = predict_latency(_ops(), host, threads=1, host=host, rates=_rates)
    assert here.band < near.band < far.band
    assert any("other ISA family" in line for line in far.basis)
    assert any("thread scaling" in line for line in far.basis)  # no profile calibrates it yet
    assert far.low_ms < far.latency_ms < far.high_ms


def test_slower_devices_predict_slower() -> None:
    host = detect_host()
    times = {name: predict_latency(_ops(), load_profile(name), threads=1, host=host, rates=_rates).latency_ms
             for name in ("rpi4", "rpi5", "x86-avx512-vnni-server")}
    assert times["rpi4"] > times["rpi5"] > times["x86-avx512-vnni-server"]
    rpi5 = load_profile("rpi5")
    four = predict_latency(_ops(), rpi5, threads=4, host=host, rates=_rates).per_class_ms
    one = predict_latency(_ops(), rpi5, threads=1, host=host, rates=_rates).per_class_ms
    assert four["gemm_fp32"] < one["gemm_fp32"] and four["tiny"] == one["tiny"]

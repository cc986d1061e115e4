"""Latency prediction from per-operator costs, on synthetic host rates (no timing in these tests)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgeprune.devices import detect_host, load_profile
from edgeprune.profiling.characterize import ConvRate, GemmRate, HostRates, StreamRate
from edgeprune.profiling.operators import OperatorProfile, OpTiming
from edgeprune.profiling.predict import predict_latency


def _rates(threads: int) -> HostRates:
    """A host whose GEMMs and bandwidth scale perfectly with threads, small GEMMs at a third of the rate."""
    gemm = [GemmRate(16, 64, 64, 30.0 * threads, 60.0 * threads),
            GemmRate(128, 384, 1536, 100.0 * threads, 300.0 * threads)]
    conv = [ConvRate("dense", 1e6, 80.0 * threads, 20.0 * threads),
            ConvRate("depthwise", 1e6, 10.0 * threads, 0.5 * threads),
            ConvRate("pointwise", 1e6, 60.0 * threads, 60.0 * threads)]
    return HostRates(threads=threads, gemm=gemm, conv=conv, bandwidth_gbs=20.0 * threads, call_overhead_us=4.0)


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
    one = predict_latency(_ops(1), host, threads=1, host=host, rates=_rates)
    two = predict_latency(_ops(1), host, threads=2, host=host, rates=_rates)
    assert one.latency_ms == pytest.approx(_ops(1).wall_ms) and one.band == 0.05
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


def test_swapping_precision_retimes_only_weight_gemms() -> None:
    from edgeprune.profiling.predict import swap_precision

    ops = _ops()
    attention = OpTiming("scores", "MatMul", "gemm_fp32", 2.0 * 128 * 384 * 1536, 1e6, ms=0.5)  # no weights
    ops = OperatorProfile(ops=[*ops.ops[:1], attention, *ops.ops[2:]], wall_ms=ops.wall_ms, threads=1, batch=1,
                          seq_len=128)
    ffn = replace(ops.ops[0], weight_bytes=4 * 384 * 1536)
    ops = replace(ops, ops=[ffn, *ops.ops[1:]])
    int8 = swap_precision(ops, to_int8=True, rates=_rates)
    assert int8.ops[0].op_class == "gemm_int8" and int8.ops[0].ms == pytest.approx(ffn.ms / 3)
    assert int8.ops[1] == attention and int8.ops[2:] == ops.ops[2:]
    back = swap_precision(int8, to_int8=False, rates=_rates)
    assert back.ops[0].ms == pytest.approx(ffn.ms) and back.wall_ms == pytest.approx(ops.wall_ms)
    # a convolution follows the conv probes, where int8 (ConvInteger) is 4x slower than fp32 here
    conv = OpTiming("conv", "Conv", "gemm_fp32", 2.0 * 32 * 56 * 56 * 288, 1e6, ms=1.0, weight_bytes=36864,
                    conv_kind="dense")
    slower = swap_precision(replace(ops, ops=[conv]), to_int8=True, rates=_rates).ops[0]
    assert slower.ms == pytest.approx(4.0)
    # each kind by its own probe: depthwise int8 20x slower, pointwise as fast as fp32
    kinds = [replace(conv, conv_kind="depthwise"), replace(conv, conv_kind="pointwise")]
    assert [op.ms for op in swap_precision(replace(ops, ops=kinds), to_int8=True, rates=_rates).ops] == (
        pytest.approx([20.0, 1.0]))


def test_back_to_fp32_an_integer_conv_is_retimed_with_its_scaffolding_and_the_scaffolding_dropped() -> None:
    from edgeprune.profiling.predict import swap_precision

    conv = OpTiming("c", "ConvInteger", "gemm_int8", 2e6, 1e5, ms=3.0, weight_bytes=1000, conv_kind="dense")
    ops = OperatorProfile(ops=[OpTiming("q", "DynamicQuantizeLinear", "memory", 1e4, 5e4, ms=0.2), conv,
                               OpTiming("cast", "Cast", "memory", 1e4, 8e4, ms=0.3, dequantizes="c"),
                               OpTiming("scale", "Mul", "memory", 1e4, 8e4, ms=0.3, dequantizes="c"),
                               OpTiming("bias", "Add", "memory", 1e4, 8e4, ms=0.4, dequantizes="c"),
                               OpTiming("relu", "Relu", "memory", 1e4, 8e4, ms=0.1, dequantizes="c"),
                               OpTiming("pad", "Pad", "memory", 1e4, 8e4, ms=0.1, dequantizes="c"),
                               OpTiming("sigmoid", "Sigmoid", "memory", 1e4, 8e4, ms=0.1)],
                          wall_ms=4.7, threads=1, batch=1, seq_len=1)
    fp32 = swap_precision(ops, to_int8=False, rates=_rates)
    assert [op.name for op in fp32.ops] == ["c", "sigmoid"]  # the ReLU and the Pad fuse into the float Conv
    assert fp32.ops[0].ms == pytest.approx((3.0 + 1.0) * 20 / 80) and fp32.ops[0].weight_bytes == 4000
    assert fp32.wall_ms == pytest.approx(1.0 + 0.1 + 0.2 * 2 / 8)  # the runtime's own 0.2 ms was 8 nodes' share


def test_a_convolution_is_priced_at_its_size_between_its_kinds_probes() -> None:
    """Small convolutions gain nothing from a second thread here (a 14x14 depthwise ran 2x slower): rates by size."""
    rates = replace(_rates(1), conv=[ConvRate("depthwise", 1e5, 10.0, 1.0), ConvRate("depthwise", 1e7, 30.0, 3.0),
                                     ConvRate("dense", 1e6, 80.0, 20.0)])
    assert rates.rate("Conv", 1e6, "depthwise", False) == pytest.approx(20e9)
    assert rates.rate("ConvInteger", 1e6, "depthwise", True) == pytest.approx(2e9)
    assert rates.rate("Conv", 1e3, "depthwise", False) == pytest.approx(10e9)  # flat beyond the probes
    assert rates.rate("Conv", 1e9, "", False) == pytest.approx(80e9)  # kind unknown: dense


@pytest.mark.parametrize(("shape", "strides", "kind"), [
    ([144, 24, 1, 1], [1, 1], "pointwise"), ([256, 128, 1, 1], [2, 2], "pointwise"),
    ([64, 64, 3, 3], [1, 1], "dense"), ([128, 64, 3, 3], [2, 2], "dense-strided"), ([32, 3, 3, 3], [], "dense"),
    ([96, 1, 3, 3], [2, 2], "depthwise"), ([672, 1, 5, 5], [1, 1], "depthwise-5x5"), (None, [1, 1], "dense")])
def test_convolutions_are_told_apart_by_their_weights_and_strides(shape, strides, kind) -> None:
    from edgeprune.profiling.operators import conv_kind

    assert conv_kind(shape, strides) == kind


def _prediction(ms: float, band: float = 0.4):
    from edgeprune.profiling.predict import Prediction

    return Prediction(device="rpi5", threads=4, latency_ms=ms, band=band)


def _calibrated(measured_over_predicted: list[float]):
    from edgeprune.profiling.calibrate import calibrate

    rpi5 = load_profile("rpi5")
    predicted = {Path(f"m{i}.onnx"): 10.0 * (i + 1) for i in range(len(measured_over_predicted))}
    measurements = {path: ms * ratio for (path, ms), ratio in zip(predicted.items(), measured_over_predicted)}
    result = calibrate(rpi5, measurements, predict=lambda path, _device, _threads: _prediction(predicted[path]))
    return rpi5, result.profile


def test_calibrating_with_the_prediction_itself_changes_no_prediction() -> None:
    from edgeprune.profiling.calibrate import ANCHOR_BAND

    rpi5, calibrated = _calibrated([1.0])
    host = detect_host()
    before = predict_latency(_ops(), rpi5, host=host, rates=_rates)
    after = predict_latency(_ops(), calibrated, host=host, rates=_rates)
    assert calibrated.calibration.latency_factor.value == 1.0
    assert after.latency_ms == pytest.approx(before.latency_ms)
    assert after.band == ANCHOR_BAND  # one anchor says nothing of other models: the validated floor
    assert calibrated.cpu == rpi5.cpu and calibrated.memory == rpi5.memory
    assert [a.latency.value for a in calibrated.calibration.anchors] == [10.0]


def test_calibration_scales_predictions_and_keeps_the_anchors_spread() -> None:
    from edgeprune.profiling.calibrate import ANCHOR_BAND

    rpi5, calibrated = _calibrated([1.5, 1.5 * 4.0])
    factor = calibrated.calibration.latency_factor.value
    assert factor == pytest.approx(1.5 * 4.0 ** 0.5, rel=1e-9)
    assert ANCHOR_BAND < 2 * (4.0 ** 0.5 - 1)  # the spread, not the floor, sets this band
    assert calibrated.calibration.band.value == pytest.approx(2 * (4.0 ** 0.5 - 1), rel=1e-3)
    host = detect_host()
    ratio = (predict_latency(_ops(), calibrated, host=host, rates=_rates).latency_ms
             / predict_latency(_ops(), rpi5, host=host, rates=_rates).latency_ms)
    assert ratio == pytest.approx(factor, rel=1e-9)


@pytest.mark.parametrize("profile", ["rpi4", "android-midrange-sd778g", "x86-avx512-vnni-server"])
@pytest.mark.parametrize("measured_ms", [0.37, 12.5, 81.234567])
def test_a_profile_calibrated_on_one_anchor_reproduces_it_exactly(tmp_path, profile, measured_ms) -> None:
    """Through the real predictor and a YAML round trip: what the user wrote down is what the profile predicts."""
    from edgeprune.devices import parse_profile
    from edgeprune.profiling.calibrate import calibrate

    host = detect_host()
    device = load_profile(profile)
    anchor = Path("anchor.onnx")
    result = calibrate(device, {anchor: measured_ms},
                       predict=lambda _path, d, threads: predict_latency(_ops(), d, threads=threads, host=host,
                                                                         rates=_rates))
    path = tmp_path / "calibrated.yaml"
    path.write_text(result.profile.to_yaml())
    again = predict_latency(_ops(), parse_profile(path), host=host, rates=_rates)
    assert again.latency_ms == pytest.approx(measured_ms, rel=1e-12)
    assert result.checks[0].measured_ms == measured_ms


def test_an_anchor_outside_the_uncalibrated_band_is_reported() -> None:
    from edgeprune.profiling.calibrate import calibrate

    rpi5 = load_profile("rpi5")
    predicted = {Path("inside.onnx"): _prediction(10.0, band=0.4), Path("outside.onnx"): _prediction(10.0, band=0.4)}
    result = calibrate(rpi5, {Path("inside.onnx"): 13.9, Path("outside.onnx"): 14.1},
                       predict=lambda path, _device, _threads: predicted[path])
    assert [c.inside for c in result.checks] == [True, False]
    assert [c.model for c in result.outside] == ["outside.onnx"]
    warning = result.outside[0].warning()
    assert "outside.onnx" in warning and "14.1 ms" in warning and "6-14 ms" in warning and "1.41x" in warning


def test_perf_test_output_and_bad_latencies(tmp_path) -> None:
    from edgeprune.errors import ProfileError
    from edgeprune.profiling.calibrate import read_latency

    output = tmp_path / "perf.txt"
    output.write_text("Session creation time cost: 0.2 s\nAverage inference time cost: 23.417 ms\n")
    assert read_latency(str(output)) == 23.417 and read_latency("12.5") == 12.5
    for bad, cause in (("-3", "not a positive finite number"), (str(tmp_path / "missing.txt"), "neither a latency")):
        with pytest.raises(ProfileError, match=cause):
            read_latency(bad)


def test_element_wise_nodes_scale_like_the_probe_of_their_size() -> None:
    """Small element-wise nodes stay on one thread in onnxruntime; streaming ones use both."""
    def rates(threads: int) -> HostRates:
        return replace(_rates(threads), elementwise=[StreamRate(12.0 * 4096, 10.0)])  # no thread scaling

    small = OpTiming("add", "Add", "memory", 4096, 12.0 * 4096, ms=0.01)
    large = OpTiming("gelu", "Gelu", "memory", 2e7, 3 * 64 * 2**20 * 4.0, ms=2.0)
    ops = OperatorProfile(ops=[small, large], wall_ms=2.01, threads=1, batch=1, seq_len=128)
    host = detect_host()
    two = predict_latency(ops, host, threads=2, host=host, rates=rates)
    assert two.latency_ms == pytest.approx(0.01 + 2.0 / 2)
    assert rates(1).stream_rate(1e3) == pytest.approx(10e9)  # below the smallest probe: its rate


def test_a_prediction_names_what_it_assumes_of_the_devices_cores() -> None:
    host = detect_host()
    phone = " | ".join(predict_latency(_ops(), load_profile("android-flagship-sd8gen3"), host=host,
                                       rates=_rates).basis)
    assert "SDOT dot-product rate" in phone and "fp16 arithmetic is assumed unused" in phone
    assert "4 thread(s) on the Cortex-A720 cluster (3 cores) only" in phone and "Cortex-X4 x1" in phone
    assert "1 thread(s) beyond the cluster" in phone
    pi4 = " | ".join(predict_latency(_ops(), load_profile("rpi4"), host=host, rates=_rates).basis)
    assert "no dot product (ARMv8.0)" in pi4 and "fp16" not in pi4 and "cluster" not in pi4
    fp32_only = replace(_ops(), ops=[op for op in _ops().ops if op.op_class != "gemm_int8"])
    assert "SDOT" not in " ".join(predict_latency(fp32_only, load_profile("rpi5"), host=host, rates=_rates).basis)

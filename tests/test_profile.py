from __future__ import annotations

import collections
import re

import pytest
import yaml

from edgeprune.devices import DeviceProfile, available_profiles, detect_host, parse_profile
from edgeprune.errors import ProfileError
from edgeprune.profiling import load_profile, measure_latency, profile
from edgeprune.profiling.measure import LatencyStats


def test_latency_percentiles() -> None:
    stats = LatencyStats(samples_ms=[float(i) for i in range(1, 101)])
    assert stats.p50 == pytest.approx(50.5) and stats.p90 == pytest.approx(90.1) and stats.p99 == pytest.approx(99.01)
    assert stats.to_dict()["runs"] == 100


def test_profile_measures_latency_and_memory(tiny_onnx) -> None:
    m = profile(tiny_onnx, "host", threads=1, seq_len=32, runs=15, warmup=3)
    assert len(m.latency_stats.samples_ms) == 15 and m.threads == 1
    assert 0 < m.latency_stats.p50 <= m.latency_stats.p90 <= m.latency_stats.p99
    assert m.memory_stats is not None and m.memory_stats.peak_mb > m.memory_stats.baseline_mb > 0
    assert m.latency("p90") == (m.latency_stats.p90,) * 3 and m.memory()[0] == m.memory_stats.peak_over_baseline_mb
    assert 0 < m.memory_stats.released_over_baseline_mb <= m.memory_stats.peak_over_baseline_mb + 1.0
    assert m.size_mb > 1 and m.host["cores"] >= 1 and "onnxruntime" in m.versions
    assert len(measure_latency(tiny_onnx, 1, seq_len=8, warmup=1, runs=3).samples_ms) == 3


def test_other_devices_are_predicted_with_a_band_never_measured_here(tiny_onnx, rates_cache, monkeypatch) -> None:
    from edgeprune.budgets import Budget, check, verdicts

    monkeypatch.setenv("XDG_CACHE_HOME", str(rates_cache))  # host rates are measured into this cache
    with pytest.raises(ProfileError, match="not this host"):
        profile(tiny_onnx, "x86-avx2-server", runs=1)
    lines, rpi = check(tiny_onnx, "rpi5", Budget(latency_ms=10_000, memory_mb=10_000), seq_len=16, runs=5)
    value, low, high = rpi.latency("p90")
    assert rpi.predicted and rpi.threads == 4 and low < value < high and rpi.host.threads == 1
    assert list(rates_cache.glob("edgeprune/host-rates-*-1t.json"))
    assert [line.status for line in lines] == ["PASS", "PASS"] and lines[0].predicted
    # judged on that one prediction's band (another estimate of a sub-millisecond model can move by 2x here)
    for budget, status in ((high * 2, "PASS"), (low / 2, "FAIL"), (value, "UNCERTAIN")):
        lines = verdicts(rpi, Budget(latency_ms=budget, memory_mb=10_000))
        assert lines[0].status == status and lines[0].predicted and lines[1].status == "PASS"


def test_host_detection() -> None:
    host = detect_host()
    assert host.is_host and host.cpu.cores >= 1 and host.memory.capacity.to("GiB") > 0
    assert host.runtime.threads == host.cpu.cores and host.cluster.clock_ghz > 0
    assert host.cluster.fp32_flops_per_cycle.kind == "derived" and host.cluster.int8_ops_per_cycle.value > 0
    assert available_profiles()[0] == "host" and "x86-avx2-server" in available_profiles()


def test_profiles_round_trip_yaml(tmp_path) -> None:
    for name in available_profiles():
        original = load_profile(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(original.to_yaml())
        again = parse_profile(path)
        assert again.to_yaml() == original.to_yaml()
        assert again == original.model_copy(update={"is_host": False})


def _server_profile() -> dict:
    return yaml.safe_load(load_profile("x86-avx2-server").to_yaml())


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["cpu"]["clusters"][0]["count"].pop("unit"), "field 'cpu.clusters.0.count.unit'"),
    (lambda d: d["cpu"]["clusters"][0]["max_clock"].update(unit="Hz"), "field 'cpu.clusters.0.max_clock.unit'"),
    (lambda d: d["cpu"]["clusters"][0]["max_clock"].update(unit="GB/s"), "field 'cpu.clusters.0.max_clock'"),
    (lambda d: d["cpu"]["clusters"][0].pop("int8_ops_per_cycle"), "field 'cpu.clusters.0.int8_ops_per_cycle'"),
    (lambda d: d["memory"]["capacity"].update(value=-1), "field 'memory.capacity.value'"),
    (lambda d: d["memory"]["capacity"].update(source=""), "field 'memory.capacity.source'"),
    (lambda d: d["runtime"].update(threads=0), "field 'runtime.threads'"),
    (lambda d: d["runtime"].update(cluster=3), "runtime.cluster 3 does not exist"),
    (lambda d: d.pop("cpu"), "field 'cpu'"),
    (lambda d: d.update(colour="blue"), "field 'colour'"),
])
def test_schema_rejects_bad_profiles(tmp_path, edit, field) -> None:
    data = _server_profile()
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match=re.escape(field)):
        load_profile(path)


def test_malformed_yaml_and_unknown_name(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(path)
    with pytest.raises(ProfileError, match="unknown device profile 'pixel-99'"):
        load_profile("pixel-99")
    assert isinstance(load_profile("x86-avx2-server"), DeviceProfile)


def test_bundled_profiles_cover_the_targets_and_carry_sources() -> None:
    names = set(available_profiles())
    assert {"host", "x86-avx2-server", "x86-avx512-vnni-server", "rpi4", "rpi5", "jetson-orin-nano",
            "android-midrange-sd778g", "android-flagship-sd8gen3", "iphone-a17-pro"} <= names
    for name in names - {"host"}:
        device = load_profile(name)
        assert device.cluster.clock_ghz > 0 and device.cluster.fp32_flops_per_cycle.value > 0
        assert device.memory.bandwidth_theoretical is not None, name
    assert load_profile("rpi4").has("neon") and not load_profile("rpi4").has("dotprod")
    assert load_profile("android-midrange-sd778g").cluster.core == "Cortex-A78"


def test_quantities_convert_within_a_dimension_only() -> None:
    from edgeprune.devices import Quantity
    from edgeprune.errors import ProfileError

    q = Quantity(value=1800, unit="MHz", source="t", kind="assumed")
    assert q.to("GHz") == pytest.approx(1.8)
    assert Quantity(value=2, unit="GiB", source="t", kind="assumed").to("MiB") == 2048
    with pytest.raises(ProfileError, match="cannot express MHz in GB/s"):
        q.to("GB/s")


def test_operator_profile_counts_the_encoder_work(tiny_onnx, tiny_bert_dir) -> None:
    from edgeprune.models import adapter_for, encoder_macs
    from edgeprune.models.loading import load_model
    from edgeprune.profiling.operators import profile_operators

    ops = profile_operators(tiny_onnx, threads=1, seq_len=16, runs=3, warmup=1)
    classes = ops.by_class()
    # tiny BERT: hidden 48, 6 heads of 8, FFN 96, 3 layers; every MAC is 2 FLOP
    model = load_model(tiny_bert_dir).model
    assert classes["gemm_fp32"]["work"] == 2 * encoder_macs(adapter_for(model).layers(model), 16)
    assert classes["gemm_fp32"]["nodes"] == 3 * 8  # Q, K, V, scores, context, out, FFN in, FFN out
    assert all(op.ms >= 0 for op in ops.ops) and 0 < ops.kernel_ms <= ops.wall_ms * 1.5
    assert classes["memory"]["traffic"] > 0 and {op.op_class for op in ops.ops} <= {
        "gemm_fp32", "gemm_int8", "memory", "tiny"}
    assert 0.8 < ops.weight_bytes / tiny_onnx.stat().st_size < 1.05  # the file is almost all weights
    # at seq 16 the largest live set is a few [1, 16, 96] FFN and [1, 6, 16, 16] score tensors, far below the total
    total_outputs = sum(op.traffic for op in ops.ops)
    assert 4 * 16 * 96 <= ops.peak_activation_bytes < total_outputs / 4


def test_operator_profile_tells_convolution_kinds_apart_in_fp32_and_int8(tmp_path) -> None:
    """The optimized graph (fused, NCHWc on x86; ConvInteger after dynamic quantization) keeps each kind."""
    import torch
    from torch import nn

    from edgeprune.int8 import dynamic_int8, int8_scheme
    from edgeprune.profiling.operators import profile_operators

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1, groups=16),
                          nn.Conv2d(16, 32, 1), nn.ReLU(), nn.ZeroPad2d(2), nn.Conv2d(32, 32, 5, 1, 0, groups=32),
                          nn.Conv2d(32, 32, 3, 1, 1)).eval()
    path = tmp_path / "cnn.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), input_names=["pixel_values"],
                          opset_version=17, dynamo=False)
    expected = ["dense-strided", "depthwise", "pointwise", "depthwise-5x5", "dense"]
    for graph in (path, dynamic_int8(path, tmp_path / "cnn-int8.onnx", int8_scheme(detect_host()))):
        ops = profile_operators(graph, threads=1, runs=2, warmup=1)
        assert sorted(op.conv_kind for op in ops.ops if "Conv" in op.op_type) == sorted(expected)
    # each ConvInteger's int32 output is cast, scaled (by the product of two scales) and biased back to float, the
    # first and third get their ReLU as a node and the fourth its explicit Pad: scaffolding the fp32 graph does not
    # have (it fuses both into its Conv)
    integer = [op.name for op in ops.ops if op.op_type == "ConvInteger"]
    scaffolding = collections.Counter((op.dequantizes, op.op_type) for op in ops.ops if op.dequantizes)
    assert scaffolding == {**{(name, op_type): 1 for name in integer for op_type in ("Cast", "Add")},
                           **{(name, "Mul"): 2 for name in integer},  # by the scales, and their product
                           (integer[0], "Relu"): 1, (integer[2], "Relu"): 1, (integer[3], "Pad"): 1}
    assert "Pad" not in {op.op_type for op in profile_operators(path, threads=1, runs=2, warmup=1).ops}


def test_weights_freed_while_loading_stay_resident_with_glibc_and_not_with_a_releasing_allocator(tmp_path) -> None:
    """Eight 4 MiB MatMul weights: onnxruntime frees their load-time copies after packing them; glibc keeps them."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeprune.profiling.memory import measure_peak_memory

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((1024, 1024)).astype(np.float32), f"w{i}") for i in range(8)]
    nodes = [helper.make_node("MatMul", [f"h{i - 1}" if i else "x", f"w{i}"], [f"h{i}"]) for i in range(8)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
                              [helper.make_tensor_value_info("h7", TensorProto.FLOAT, [1, 1024])], weights)
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    stats = measure_peak_memory(path, threads=1, runs=2)
    assert stats.peak_over_baseline_mb >= 32  # the weights themselves
    assert stats.released_over_baseline_mb < stats.peak_over_baseline_mb - 8

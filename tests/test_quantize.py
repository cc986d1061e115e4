from __future__ import annotations

import numpy as np

from edgeprune import runtime
from edgeprune.profile.devices import Cluster, Cpu, DeviceProfile, Memory, Quantity, Runtime, load_profile
from edgeprune.quantize import int8_scheme, quantize


def _device(arch: str, isa: list[str]) -> DeviceProfile:
    def q(value: float, unit: str) -> Quantity:
        return Quantity(value=value, unit=unit, source="test", kind="assumed")

    cluster = Cluster(core="t", count=q(4, "cores"), max_clock=q(2, "GHz"), isa=isa,
                      fp32_flops_per_cycle=q(16, "FLOP/cycle"), int8_ops_per_cycle=q(64, "ops/cycle"))
    return DeviceProfile(name="t", description="", cpu=Cpu(name="t", arch=arch, clusters=[cluster]),
                         memory=Memory(capacity=q(4, "GiB")), runtime=Runtime(threads=1))


def test_scheme_follows_the_isa() -> None:
    avx2 = int8_scheme(_device("x86_64", ["avx2", "fma"]))
    vnni = int8_scheme(_device("x86_64", ["avx2", "avx512f", "avx512_vnni"]))
    arm = int8_scheme(_device("arm64", ["neon", "dotprod"]))
    assert avx2.reduce_range and avx2.activation_type == "uint8"
    assert not vnni.reduce_range and vnni.weight_type == "int8"
    assert not arm.reduce_range and "SDOT" in arm.reason
    assert "without dotprod" in int8_scheme(_device("arm64", ["neon"])).reason
    assert int8_scheme(load_profile("x86-avx2-server")) == avx2


def test_quantized_model_runs_and_is_smaller(tiny_onnx, tmp_path) -> None:
    result = quantize(tiny_onnx, tmp_path / "int8", "host", seq_len=32, rounds=1, runs=5)
    assert set(result.p50_ms) >= {"fp32", "int8"}
    assert result.chosen == min(result.p50_ms, key=result.p50_ms.get)
    assert (tmp_path / "int8" / "config.json").is_file() and (tmp_path / "int8" / "tokenizer.json").is_file()
    assert not (tmp_path / "int8" / "candidates").exists()
    sess = runtime.session(result.onnx_path)
    arrays = runtime.synthetic_feed(sess, 2, 16)
    output = sess.run(None, arrays)[0]
    reference = runtime.session(tiny_onnx).run(None, arrays)[0]
    assert output.shape == reference.shape == (2, 16, 48)
    cos = (output * reference).sum(-1) / (np.linalg.norm(output, axis=-1) * np.linalg.norm(reference, axis=-1))
    assert cos.mean() > 0.95
    if result.chosen != "fp32":
        assert result.size_after_mb < result.size_before_mb

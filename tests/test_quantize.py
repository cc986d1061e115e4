from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgeprune import runtime
from edgeprune.cli import app
from edgeprune.devices import Cluster, Cpu, DeviceProfile, Memory, Quantity, Runtime, load_profile
from edgeprune.errors import BadArgumentError
from edgeprune.exporting import export_module
from edgeprune.quantization import (
    FORMS,
    Int4Options,
    choose_form,
    first_outputs,
    int8_scheme,
    mean_cosine,
    quantize,
    static_int8,
)
from edgeprune.quantization.fidelity import node_damage
from edgeprune.quantization.forms import weight_only_int4


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
    assert result.form in ("fp32", *FORMS) and result.chosen.startswith(result.form)
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


def _cnn_onnx(path) -> tuple:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(64, 10)).eval()
    images = torch.rand(16, 3, 64, 64)
    onnx_path = export_module(model, path / "model.onnx", images[:4]).onnx_path
    return onnx_path, [{"input": b.numpy()} for b in images.split(4)]


def test_slower_int8_form_is_never_chosen(tmp_path) -> None:
    """Dynamic int8 turns convolutions into ConvInteger, far slower than fp32 Conv on x86: a planted slow
    candidate. Static QDQ int8 is calibrated on the given inputs and competes with it."""
    onnx_path, feeds = _cnn_onnx(tmp_path / "cnn")
    result = quantize(onnx_path, tmp_path / "int8", "host", rounds=2, runs=10, calibration=feeds)
    assert result.p50_ms["int8"] > result.p50_ms["fp32"]  # the plant is slower
    assert result.chosen != "int8" and any(note.startswith("int8 not used") for note in result.notes)
    assert result.chosen == min(result.p50_ms, key=result.p50_ms.get)
    assert result.p50_ms[result.chosen] <= result.p50_ms["fp32"]
    assert "int8-static" in result.p50_ms and result.fidelity["int8-static"] > 0.98
    if result.chosen == "int8-static":
        ops = {node.op_type for node in onnx.load(str(result.onnx_path)).graph.node}
        assert "QuantizeLinear" in ops


def test_candidate_that_loses_quality_is_rejected(tmp_path) -> None:
    """Static int8 calibrated on inputs 1000x too small clips every real activation: it must not ship."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, bias=False)).eval()
    images = torch.randn(16, 3, 32, 32)
    onnx_path = export_module(model, tmp_path / "cnn" / "model.onnx", images[:4]).onnx_path
    feeds = [{"input": b.numpy()} for b in images.split(4)]
    tiny = [{"input": feed["input"] * 1e-3} for feed in feeds]
    result = quantize(onnx_path, tmp_path / "int8", "host", rounds=1, runs=3, calibration=tiny, check=feeds)
    assert result.fidelity["int8-static"] < 0.9 < result.fidelity["int8"]
    assert "int8-static" not in result.p50_ms and result.chosen != "int8-static"
    assert any(note.startswith("int8-static rejected: output cosine") for note in result.notes)


def _outlier_mlp(path) -> tuple:
    """x → MatMul → ReLU → MatMul → h → MatMul → y where one channel of h is 1000x the others but y ignores it:
    per-tensor int8 ranges for h round the channels that matter to zero, unless h stays fp32."""
    torch.manual_seed(0)
    layers = [nn.Linear(16, 32, bias=False), nn.ReLU(), nn.Linear(32, 32, bias=False), nn.Linear(32, 8, bias=False)]
    with torch.no_grad():
        layers[2].weight[0] *= 1000.0
        layers[3].weight[:, 0] = 0.0
    x = torch.randn(64, 16)
    onnx_path = export_module(nn.Sequential(*layers).eval(), path / "model.onnx", x[:4]).onnx_path
    return onnx_path, [{"input": b.numpy()} for b in x.split(16)]


def test_static_int8_leaves_the_most_damaging_nodes_in_fp32(tmp_path) -> None:
    onnx_path, feeds = _outlier_mlp(tmp_path / "mlp")
    scheme = int8_scheme(load_profile("host"))
    reference = first_outputs(onnx_path, feeds)
    whole = static_int8(onnx_path, tmp_path / "whole.onnx", scheme, feeds)
    assert mean_cosine(reference, first_outputs(whole, feeds)) < 0.9  # fully quantized, the model is broken
    first, producer, reader = [n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "MatMul"]
    worst = node_damage(onnx_path, whole, feeds)[0]
    assert worst.node == reader and worst.fp32_nodes == (reader, producer)  # h's reader, and h's producer
    result = quantize(onnx_path, tmp_path / "int8", "host", rounds=1, runs=3, calibration=feeds, check=feeds)
    assert result.excluded_nodes == sorted([producer, reader])
    assert result.fidelity["int8-static"] >= 0.9 and result.fidelity["int8-static-qop"] >= 0.9
    assert any(note.startswith("int8-static: 2 of ") and f"(the most damaging: {reader};" in note
               for note in result.notes), result.notes
    static = runtime.session(tmp_path / "int8" / "model.onnx")  # whatever shipped still runs
    assert static.run(None, feeds[0])[0].shape == (16, 8)
    partly = static_int8(onnx_path, tmp_path / "partly.onnx", scheme, feeds, exclude=result.excluded_nodes)
    first_reads = [n for n in onnx.load(str(partly)).graph.node if n.name == first][0].input
    assert any(name.endswith("DequantizeLinear_Output") for name in first_reads)  # the first MatMul stays int8


def test_the_fastest_faithful_form_is_chosen_and_every_other_noted() -> None:
    p50 = {"fp32": 10.0, "int8": 6.0, "int8-fused": 5.0, "int8-static": 12.0}
    fidelity = {"fp32": 1.0, "int8": 0.97, "int8-fused": 0.96, "int8-static": 0.99, "int8-static-qop": 0.4}
    choice = choose_form(p50, fidelity, min_fidelity=0.9)
    assert choice.chosen == "int8-fused"
    assert choice.notes == ["int8-static-qop rejected: output cosine to fp32 0.4000 < 0.9",
                            "int8-static not used: 12.000 ms, not faster than fp32 (10.000 ms)"]
    assert choose_form(p50, {**fidelity, "int8-fused": 0.5}, 0.9).chosen == "int8"  # fast but unfaithful
    slow = choose_form({"fp32": 10.0, "int8": 11.0}, {"fp32": 1.0, "int8": 0.97}, 0.9)
    assert slow.chosen == "fp32" and slow.notes[-1] == "no int8 form was faster than fp32 on this host; kept fp32"


def test_an_unknown_form_is_a_bad_argument(tiny_onnx, tmp_path) -> None:
    with pytest.raises(BadArgumentError, match=r"unknown quantized form\(s\) \['int2'\]"):
        quantize(tiny_onnx, tmp_path / "int8", "host", forms=("int8", "int2"))
    assert not (tmp_path / "int8").exists()


def _blocks(onnx_path) -> dict[str, set[int]]:
    """The ``block_size`` attribute of every int4 node, by op type."""
    found: dict[str, set[int]] = {}
    for node in onnx.load(str(onnx_path)).graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            found.setdefault(node.op_type, set()).add(onnx.helper.get_node_attr_value(node, "block_size"))
    return found


def test_int4_blocks_reach_the_written_nodes(tiny_onnx, tmp_path) -> None:
    chosen = weight_only_int4(tiny_onnx, tmp_path / "chosen.onnx", Int4Options(block_size=16, embedding_block=64))
    assert _blocks(chosen) == {"MatMulNBits": {16}, "GatherBlockQuantized": {64}}
    # the tiny BERT's shortest weight column has 48 rows: the default MatMul block (128) would be mostly zero padding
    default = weight_only_int4(tiny_onnx, tmp_path / "default.onnx")
    assert _blocks(default) == {"MatMulNBits": {32}, "GatherBlockQuantized": {Int4Options().embedding_block}}
    feed = runtime.synthetic_feed(runtime.session(tiny_onnx), 2, 16)
    reference = first_outputs(tiny_onnx, [feed])
    assert mean_cosine(reference, first_outputs(chosen, [feed])) > 0.95
    assert mean_cosine(reference, first_outputs(default, [feed])) > 0.95


def test_larger_int4_blocks_make_a_smaller_file(tiny_onnx, tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 256)
    mlp = export_module(nn.Linear(256, 64, bias=False), tmp_path / "mlp" / "model.onnx", x).onnx_path
    small, large = (weight_only_int4(mlp, tmp_path / f"mlp-{block}.onnx", Int4Options(block_size=block))
                    for block in (32, 128))
    assert _blocks(large)["MatMulNBits"] == {128}
    assert large.stat().st_size < small.stat().st_size
    small, large = (weight_only_int4(tiny_onnx, tmp_path / f"bert-{block}.onnx", Int4Options(embedding_block=block))
                    for block in (16, 1024))
    assert large.stat().st_size < small.stat().st_size


@pytest.mark.parametrize(("flag", "value", "field"), [("--int4-block", 48, "block_size"),
                                                       ("--int4-block", 512, "block_size"),
                                                       ("--int4-embedding-block", 8, "embedding_block"),
                                                       ("--int4-embedding-block", 100, "embedding_block")])
def test_a_bad_int4_block_is_a_clear_error(tiny_onnx, tmp_path, flag, value, field) -> None:
    with pytest.raises(BadArgumentError, match=f"^{flag} {value} is not"):
        Int4Options(**{field: value})
    result = CliRunner().invoke(app, ["quantize", str(tiny_onnx), "--out", str(tmp_path / "q"), flag, str(value)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} {value} is not") and "pass" in lines[0]
    assert not (tmp_path / "q").exists()

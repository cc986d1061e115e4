"""A decoder's decode speed predicted on other devices: bandwidth drives it. The model is tested on given figures (no
timing); estimate and check are run on the tiny decoder with this host's rates given, and only the structure of what
they answer (an ordered band, the fields, a verdict) is asserted, never a timed value."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeprune.budgets import FAIL, PASS, UNCERTAIN, Budget, verdicts
from edgeprune.cli import app
from edgeprune.devices import detect_host, load_profile
from edgeprune.files import atomic_write_json
from edgeprune.profiling import Estimate, Measurement, Prediction, estimate, measure
from edgeprune.profiling.characterize import ConvRate, GemmRate, HostRates, _cache_path
from edgeprune.profiling.decode import DecodeFigures, DecodeTraffic, decode_ms, decode_traffic, predict_decode
from edgeprune.profiling.measure import LatencyStats, StabilityRules


def _rates(threads: int) -> HostRates:
    """A host streaming 10 GB/s per thread, with GEMMs of a small core."""
    return HostRates(threads=threads, gemm=[GemmRate(16, 64, 64, 10.0 * threads, 20.0 * threads),
                                            GemmRate(128, 384, 1536, 50.0 * threads, 150.0 * threads)],
                     conv=[ConvRate("dense", 1e6, 40.0 * threads, 10.0 * threads),
                           ConvRate("depthwise", 1e6, 5.0 * threads, 1.0 * threads)],
                     bandwidth_gbs=10.0 * threads, call_overhead_us=4.0)


@pytest.fixture
def given_rates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This host's one-thread rates written into a fresh cache, so ``estimate`` reads them instead of measuring
    them (~45 s), and no re-measuring of unstable timings (up to 30 s each on a busy host): what is under test is
    the prediction's shape, not this host's speed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    atomic_write_json(_cache_path(1, None), asdict(_rates(1)))
    monkeypatch.setattr(measure, "RULES", StabilityRules(remeasure_s=0.0))


def _figures(**changes: float) -> DecodeFigures:
    """A host decoding in 10 ms/token, all of it streaming 100 MB at 10 GB/s; a device with as much bandwidth,
    ample compute, and this model's forward pass predicted at half the host's time."""
    return replace(DecodeFigures(host_ms=10.0, bytes_per_token=100e6, flops_per_token=2 * 25e6,
                                 host_bandwidth_gbs=10.0, device_bandwidth_gbs=10.0, device_flops=1e12,
                                 forward_ratio=0.5), **changes)


def test_half_the_bandwidth_doubles_the_decode_time() -> None:
    assert sum(decode_ms(_figures()).values()) == pytest.approx(10.0)
    half = decode_ms(_figures(device_bandwidth_gbs=5.0))
    assert half == {"bandwidth": pytest.approx(20.0), "rest": pytest.approx(0.0)}
    # faster cores do not help a step that is all streaming...
    assert decode_ms(_figures(device_bandwidth_gbs=5.0, forward_ratio=0.1)) == half
    # ...and slow ones floor it: 50 MFLOP at 1 GFLOP/s
    assert decode_ms(_figures(device_flops=1e9)) == {"compute": pytest.approx(50.0)}


def test_fewer_weight_bytes_decode_faster_and_gain_most_where_bandwidth_is_scarce() -> None:
    fp32 = _figures()
    int4 = _figures(bytes_per_token=100e6 / 7)  # the same host time: only 1/7 of it is streaming
    assert int4.memory_share == pytest.approx(1 / 7) and fp32.memory_share == 1.0
    speedups = []
    for gbs in (10.0, 5.0, 2.5):
        slow, fast = (sum(decode_ms(replace(f, device_bandwidth_gbs=gbs)).values()) for f in (fp32, int4))
        assert fast < slow
        speedups.append(slow / fast)
    assert speedups == sorted(speedups)


def test_weight_bytes_come_from_the_file_and_int4_reads_fewer(tiny_decoder_onnx: Path, tmp_path: Path) -> None:
    from edgeprune.quantization.forms import weight_only_int4

    fp32 = decode_traffic(tiny_decoder_onnx)
    int4 = decode_traffic(weight_only_int4(tiny_decoder_onnx, tmp_path / "int4.onnx"))
    # the output projection (30522 x 32 fp32) is read per token, the embedding table (as large) only by its row
    assert 30522 * 32 * 4 < fp32.weight_bytes < 2 * 30522 * 32 * 4 < tiny_decoder_onnx.stat().st_size
    assert fp32.cache_bytes_per_position == 2 * 2 * 2 * 8 * 4  # layers x (key, value) x KV heads x head size x fp32
    assert int4.weight_bytes < fp32.weight_bytes / 4 and int4.low_bit and not fp32.low_bit
    assert int4.parameters == pytest.approx(fp32.parameters, rel=0.1)  # the same matrices, K x N each
    assert int4.cache_bytes_per_position == fp32.cache_bytes_per_position


def test_an_unmeasured_bandwidth_widens_the_band_and_says_so() -> None:
    host = detect_host()
    traffic = DecodeTraffic(weight_bytes=50e6, cache_bytes_per_position=1e4, parameters=12.5e6, low_bit=False)

    def on(name: str) -> Prediction:
        return predict_decode(traffic, 8.0, 100.0, load_profile(name), threads=4, forward_ratio=0.5, host=host,
                              rates=_rates)

    measured, theoretical = on("rpi5"), on("android-flagship-sd8gen3")
    assert measured.band < theoretical.band
    assert any("no measured bandwidth" in line and "DRAM efficiency" in line for line in theoretical.basis)
    assert any("memory-bound share" in line for line in measured.basis)
    # rpi5 streams 5.6 GB/s against this host's 10: the streaming share slows by 10 / 5.6
    assert measured.per_class_ms["bandwidth"] == pytest.approx(51e6 / 10e9 * 1e3 * 10 / 5.6)


def test_a_predicted_tokens_band_is_judged_as_a_floor() -> None:
    """Decode at 20 ms/token ± 25%: 50 tokens/s, band 40-66.7."""
    host = Measurement(model="m.onnx", profile="host", size_mb=1.0, threads=1, batch=1, seq_len=16,
                       latency_stats=LatencyStats([1.0, 2.0, 3.0]), memory_stats=None, host={}, versions={})
    forward = Prediction(device="rpi5", threads=4, latency_ms=2.0, band=0.25)
    result = Estimate(device="rpi5", threads=4, prediction=forward, host=host,
                      decode=Prediction(device="rpi5", threads=4, latency_ms=20.0, band=0.25))
    assert result.tokens_per_s() == (pytest.approx(50.0), pytest.approx(40.0), pytest.approx(1e3 / 15))
    for floor, status in ((30.0, PASS), (80.0, FAIL), (50.0, UNCERTAIN)):
        [line] = verdicts(result, Budget(tokens_per_s=floor))
        assert line.status == status and line.predicted and line.low < line.value < line.high
    assert "straddles" in line.reason


def test_estimate_answers_a_decoders_tokens_per_s(tiny_decoder_onnx: Path, given_rates: None) -> None:
    rpi5 = estimate(tiny_decoder_onnx, "rpi5", seq_len=16, new_tokens=8, runs=5, warmup=2, memory=False)
    value, low, high = rpi5.tokens_per_s()
    assert 0 < low < value < high and rpi5.decode is not None
    assert rpi5.latency("p50")[0] == pytest.approx(rpi5.prediction.latency_ms)  # latency stays the prefill
    data = rpi5.to_dict()
    decode, tokens = data["decode_ms_per_token"], data["tokens_per_s"]
    assert decode["low_ms"] <= decode["latency_ms"] <= decode["high_ms"] and decode["threads"] == 4
    assert tokens["low"] <= tokens["value"] <= tokens["high"]
    assert any(line.startswith("decode:") for line in rpi5.basis) and decode["basis"]


def test_check_judges_tokens_per_s_on_another_device(tiny_decoder_onnx: Path, tmp_path: Path,
                                                     given_rates: None) -> None:
    result = CliRunner().invoke(app, ["check", str(tiny_decoder_onnx), "--profile", "rpi5", "--tokens-per-s", "1e9",
                                      "--seq-len", "16", "--new-tokens", "8", "--runs", "4",
                                      "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 1, result.output  # a verdict (under the floor), not a refusal
    report = json.loads((tmp_path / "v.json").read_text())
    [line] = report["verdicts"]
    assert line["metric"] == "decode_tokens_per_s" and line["predicted"] and line["status"] in (FAIL, UNCERTAIN)
    assert line["low"] <= line["value"] <= line["high"] and line["margin"] < 0
    assert "tokens_per_s" in report["measurement"] and "decode:" in result.stdout

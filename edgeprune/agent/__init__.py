"""The device agent: a small HTTP server on the device that measures ONNX models with edgeprune's own latency and
peak-memory code, and the client that talks to it.

A prediction from this host carries a band; a device that can run Python and onnxruntime (a Linux or macOS board,
Android under Termux) can instead be measured, with the same code a local ``edgeprune profile`` runs, so its
figures mean the same thing. ``server.py`` (FastAPI app, ``serve``), ``store.py`` (uploaded models by content
hash), ``measuring.py`` + ``worker.py`` (each measurement in a child process under a time limit),
``hardware.py`` (what the device is), ``client.py`` (``RemoteDevice``), ``draft.py`` (a device profile drafted from
the agent's hardware report), ``anchors.py`` (the built-in models ``calibrate --remote`` measures). The agent never
imports torch: a device needs onnxruntime, numpy, pydantic and the ``agent`` extra only.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

from edgeprune.errors import BadArgumentError, EdgepruneError

if TYPE_CHECKING:
    from edgeprune.agent.client import RemoteDevice

SERVER_MODULES = ("fastapi", "uvicorn", "python_multipart")
CLIENT_MODULES = ("httpx",)


def require_extra(modules: tuple[str, ...]) -> None:
    """Refuse, with the install line, when the ``agent`` extra's packages are missing (they are optional: only a
    device running the agent, or a machine talking to one, needs them)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise EdgepruneError(f"the device agent needs {', '.join(missing)}, which is not installed",
                             "pip install 'edgeprune[agent]'")


def connect(url: str, token: str | None = None) -> RemoteDevice:
    """The agent at ``url``, reached with ``token`` or, without one, the token in ``EDGEPRUNE_AGENT_TOKEN``; the
    client's packages are checked first, so a missing extra is one install line."""
    require_extra(CLIENT_MODULES)
    from edgeprune.agent.client import RemoteDevice
    from edgeprune.agent.protocol import TOKEN_ENV

    token = token or os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise BadArgumentError(f"--remote {url} needs the agent's token",
                               f"pass --token, or set {TOKEN_ENV} (the agent printed its token when it started)")
    return RemoteDevice(url, token)

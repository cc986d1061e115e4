"""The client of a device agent: ``RemoteDevice(url, token)`` uploads a model and gets back the device's own
``Measurement``, judged here by the same budget code as a local one.

Every failure is one ``RemoteError`` naming the agent's URL and the fix: nothing listening, a timeout, a wrong
token, a refusal with the agent's own reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from edgeprune.agent.protocol import MeasureRequest, MeasureSettings
from edgeprune.errors import ModelLoadError, ProfileError, RemoteError
from edgeprune.profiling import Measurement

CONNECT_TIMEOUT_S = 10.0
DEFAULT_TIMEOUT_S = 1800.0
"""How long to wait for an answer: longer than the agent's own time limit (600 s by default) plus an upload."""
CHUNK = 1 << 20


class RemoteDevice:
    """An edgeprune agent at ``url`` (``http://device:8642``), reached with its ``token``."""

    def __init__(self, url: str, token: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise RemoteError(f"'{url}' is not an agent URL", "pass it as http://HOST:PORT (edgeprune agent serve)")
        self._client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                                    timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S))

    def hardware(self) -> dict[str, Any]:
        """The device's hardware report (``edgeprune.agent.hardware.hardware_report``)."""
        return self._call("GET", "/hardware")

    def upload(self, model_path: Path) -> str:
        """Send the model (one file: a model with external data files is refused here); its sha256 on the agent."""
        model_path = Path(model_path)
        refuse_external_data(model_path)
        answer = self._call("POST", "/models", content=_chunks(model_path),
                            headers={"Content-Type": "application/octet-stream",
                                     "Content-Length": str(model_path.stat().st_size)})
        return str(answer["sha256"])

    def measure(self, model_path: Path, settings: MeasureSettings) -> Measurement:
        """Upload ``model_path`` and measure it on the device: a ``Measurement`` of the device (its host, versions and
        health), named after the local file and profile ``url``."""
        sha256 = self.upload(model_path)
        answer = self._call("POST", "/measure", json=MeasureRequest(sha256=sha256, **settings.model_dump())
                            .model_dump())
        try:
            measurement = Measurement.from_dict({**answer, "model": str(model_path), "profile": self.url})
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ProfileError):
            raise RemoteError(f"the agent at {self.url} answered a measurement this edgeprune cannot read",
                              "install the same edgeprune version on the device and here") from None
        return measurement

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteDevice:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One request; every way it can fail becomes one ``RemoteError`` naming the URL and the fix."""
        where = f"{self.url}{path}"
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise RemoteError(f"nothing answers at {self.url}",
                              "start the agent on the device (edgeprune agent serve), check the URL and port, and "
                              "that the device is reachable from here") from None
        except httpx.TimeoutException:
            raise RemoteError(f"the agent at {self.url} did not answer {method} {path} in time",
                              "check that the device is up; a long measurement needs fewer --runs") from None
        except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
            raise RemoteError(f"the agent at {self.url} closed the connection during {method} {path}",
                              "an upload over the agent's cap is cut off: start it with a larger --max-upload-mb"
                              ) from None
        if response.status_code == 401:
            raise RemoteError(f"the agent at {self.url} refused the token",
                              "pass the token it printed at start (--token, or EDGEPRUNE_AGENT_TOKEN)")
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            detail = body.get("detail") if isinstance(body, dict) else response.text[:200]
            raise RemoteError(f"the agent at {where} answered {response.status_code}: {detail}")
        return body


def _chunks(path: Path) -> Iterator[bytes]:
    """The file in 1 MiB pieces: a 400 MB model is never all in memory."""
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def refuse_external_data(model_path: Path) -> None:
    """The agent takes one file; a model whose weights live in external data files would arrive without them."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(model_path), load_external_data=False).graph
    except OSError as exc:
        raise ModelLoadError(f"cannot read '{model_path}' ({exc.strerror})", "pass the path of a .onnx file") from None
    except DecodeError:
        return  # not a model at all: the agent says so, as it would for a local profile
    external = sorted({entry.value for tensor in graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL
                       for entry in tensor.external_data if entry.key == "location"})
    if external:
        raise ModelLoadError(f"'{model_path}' keeps its weights in external data files ({', '.join(external)}), and "
                             "the agent takes one file", "save it as one file: onnx.save(onnx.load(path), out) "
                                                          "(a model under 2 GB fits)")

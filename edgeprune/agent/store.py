"""The agent's model store: every upload is saved as ``<sha256>.onnx`` in one directory, named by its content.

A client never chooses a file name, so no name it sends (``../../.bashrc``) can reach the file system; the same
model uploaded twice is one file. An upload is streamed into a temporary file inside the store while its hash is
computed and its size counted (over the cap it is deleted at once), then renamed into place atomically, so the
store never holds half a model under a real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from edgeprune.agent.protocol import SHA256, Refusal

SUFFIX = ".onnx"
PARTIAL_PREFIX = ".upload-"


class Upload:
    """One upload in progress: bytes go to a temporary file in the store, counted and hashed as they arrive."""

    def __init__(self, handle: BinaryIO, max_bytes: int) -> None:
        self._handle = handle
        self._max_bytes = max_bytes
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; over the cap, a 413 (the caller's ``ModelStore.upload`` deletes the partial file)."""
        self.size += len(chunk)
        if self.size > self._max_bytes:
            raise too_large(self._max_bytes)
        self._digest.update(chunk)
        self._handle.write(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def too_large(max_bytes: int) -> Refusal:
    return Refusal(413, f"the upload is over the agent's cap of {max_bytes / 1e6:g} MB",
                   "start the agent with a larger --max-upload-mb, or upload a smaller model")


class ModelStore:
    """The models uploaded to this agent, by content hash, in ``directory`` (created private to the user)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.directory.glob(f"{PARTIAL_PREFIX}*"):  # uploads a killed agent left unfinished
            stale.unlink(missing_ok=True)

    @contextlib.contextmanager
    def upload(self) -> Iterator[Upload]:
        """An upload to write into; when the block ends without an exception it is stored under its hash, else the
        partial file is deleted."""
        descriptor, partial = tempfile.mkstemp(dir=self.directory, prefix=PARTIAL_PREFIX, suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                upload = Upload(handle, self.max_bytes)
                yield upload
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, self.directory / f"{upload.sha256}{SUFFIX}")
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise

    def path_of(self, sha256: str) -> Path:
        """The stored model with this hash; 404 when there is none. Only a 64-hex-digit name is ever looked up, so
        the path cannot leave the store whatever the caller sends."""
        if not SHA256.fullmatch(sha256):
            raise Refusal(422, "sha256 must be 64 lower-case hex digits", "send the sha256 POST /models answered")
        path = self.directory / f"{sha256}{SUFFIX}"
        if not path.is_file():
            raise Refusal(404, f"no uploaded model has sha256 {sha256}", "upload it first (POST /models)")
        return path

"""Receiving a model: the request body streamed into the store, as raw bytes or as one multipart file.

The body is never held in memory nor spooled anywhere but the store, and counting starts with the first byte, so
an upload over the cap costs the agent at most the cap. Multipart is parsed as it streams (``python_multipart``);
the file name a client sends is read only to tell the file part from form fields, and never used.
"""

from __future__ import annotations

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from edgeprune.agent.protocol import Refusal
from edgeprune.agent.store import ModelStore, Upload, too_large


async def receive_model(request: Request, store: ModelStore) -> tuple[str, int]:
    """Stream the request's model into ``store``: (sha256, size in bytes). 413 over the cap (the declared length is
    refused before a byte is read), 422 for an empty body or multipart without exactly one file."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > store.max_bytes:
        raise too_large(store.max_bytes)
    content_type = request.headers.get("content-type", "")
    with store.upload() as upload:
        sink = _Multipart(content_type, upload) if content_type.startswith("multipart/form-data") else _Raw(upload)
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > store.max_bytes:
                raise too_large(store.max_bytes)
            sink.write(chunk)
        sink.finish()
    return upload.sha256, upload.size


class _Raw:
    """The body is the model (``Content-Type: application/octet-stream``, or anything not multipart)."""

    def __init__(self, upload: Upload) -> None:
        self.upload = upload

    def write(self, chunk: bytes) -> None:
        self.upload.write(chunk)

    def finish(self) -> None:
        if self.upload.size == 0:
            raise Refusal(422, "the upload is empty", "send the .onnx file as the request body")


class _Multipart:
    """A ``multipart/form-data`` body (``curl -F model=@model.onnx``): the one part with a file name is the model."""

    def __init__(self, content_type: str, upload: Upload) -> None:
        boundary = parse_options_header(content_type)[1].get(b"boundary")
        if not boundary:
            raise Refusal(422, "the multipart upload has no boundary", "let the HTTP client build the multipart body")
        self.upload = upload
        self.files = 0
        self._in_file = False
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._headers.clear, "on_header_field": self._on_field,
            "on_header_value": self._on_value, "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished, "on_part_data": self._on_data})

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise Refusal(422, f"the upload is not valid multipart/form-data ({exc})",
                          "send the .onnx file as the raw body, or as one multipart file") from None

    def finish(self) -> None:
        self._parser.finalize()
        if self.files != 1 or self.upload.size == 0:
            raise Refusal(422, "the multipart upload holds no model file",
                          "send one .onnx file (curl -F model=@m.onnx)")

    def _on_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _on_headers_finished(self) -> None:
        params = parse_options_header(self._headers.get(b"content-disposition", b""))[1]
        self._in_file = b"filename" in params or b"filename*" in params
        if self._in_file:
            self.files += 1
            if self.files > 1:
                raise Refusal(422, "the multipart upload holds more than one file", "upload one model per request")

    def _on_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.upload.write(data[start:end])

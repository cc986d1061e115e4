"""Silence the chatter of exporter and quantizer libraries, so the user sees edgeprune's own output."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

NOISY_LOGGERS = ("", "optimum", "transformers", "torch.onnx", "onnxruntime", "onnxruntime.transformers",
                 "onnx_ir", "onnxscript", "ort_format_model.utils")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Drop library warnings, INFO/WARNING logs and stdout prints inside the block; errors still raise."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)

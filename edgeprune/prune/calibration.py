"""Calibration batches: tokenized text that data-driven importance criteria score on."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeprune.data import calibration_sentences
from edgeprune.errors import EdgepruneError
from edgeprune.evaluate import as_torch, tokenize

BATCH_SIZE = 16


def read_texts(path: Path) -> list[str]:
    """One text per non-empty line."""
    try:
        texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise EdgepruneError(f"cannot read calibration text '{path}' ({exc.strerror})",
                             "pass a UTF-8 text file with one text per line") from None
    if not texts:
        raise EdgepruneError(f"calibration file '{path}' has no text", "put one text per line")
    return texts


def calibration_batches(tokenizer: object, texts: list[str],
                        batch_size: int = BATCH_SIZE) -> list[dict[str, torch.Tensor]]:
    """Padded batches of model inputs, in the order of ``texts`` (EMA accumulation depends on it)."""
    return [as_torch(tokenize(tokenizer, texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]


def batches_for(criterion: str, recovery: str, tokenizer: object,
                path: Path | str | None) -> list[dict[str, torch.Tensor]] | None:
    """Calibration batches when scoring or recovery needs data: from ``path``, else edgeprune's built-in sentences."""
    if criterion == "magnitude" and recovery == "none":
        return None
    return calibration_batches(tokenizer, read_texts(Path(path)) if path else calibration_sentences())

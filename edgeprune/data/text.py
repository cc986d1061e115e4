"""Text → model inputs, the same way for calibration, export parity, quantization checks and evaluation."""

from __future__ import annotations

import numpy as np
import torch

MAX_LENGTH = 128


def tokenize(tokenizer: object, texts: list[str], max_length: int = MAX_LENGTH) -> dict[str, np.ndarray]:
    """Pad to the longest text in the batch, so parity and quality see real padding."""
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np"))


def as_torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tokenizer arrays as the tensors a PyTorch model takes (shared memory, no copy)."""
    return {k: torch.from_numpy(v) for k, v in arrays.items()}

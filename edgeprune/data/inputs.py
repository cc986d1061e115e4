"""Raw inputs (texts or images) → the arrays a model reads, through the model's own processor.

Every stage that runs a model on real data — calibration, export parity, quantization checks,
fidelity — comes through ``model_inputs``, so a text model given images (or an image model
given text) is refused here with one clear error instead of failing deep inside a library.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeprune.data.text import tokenize
from edgeprune.errors import BadArgumentError


def reads_pixels(processor: object) -> bool:
    """Whether ``processor`` is an image processor (its model reads ``pixel_values``)."""
    return "pixel_values" in getattr(processor, "model_input_names", ())


def model_inputs(processor: object, items: Sequence[object]) -> dict[str, np.ndarray]:
    """Tokenize texts, or turn images into ``pixel_values``, as ``processor`` (a tokenizer or an image processor)
    does; the kinds must match."""
    texts = all(isinstance(item, str) for item in items)
    pixels = reads_pixels(processor)
    if texts and not pixels:
        return tokenize(processor, list(items))
    if not texts and pixels:
        return {"pixel_values": np.asarray(processor(images=list(items), return_tensors="np")["pixel_values"])}
    given, wanted = ("text", "images") if texts else ("images", "text")
    raise BadArgumentError(f"{given} given to a model that reads {wanted}",
                           f"pass {wanted}: {'a folder of images' if pixels else 'a text file, one text per line'}")


def input_batches(processor: object, items: Sequence[object], size: int) -> list[dict[str, np.ndarray]]:
    """``model_inputs`` of ``items`` in batches of ``size``, in order (EMA accumulation depends on it)."""
    return [model_inputs(processor, items[i:i + size]) for i in range(0, len(items), size)]

"""Calibration batches: the real inputs data-driven importance criteria and recovery run on.

Text models read a text file (one text per line; default: edgeprune's built-in calibration
sentences). Image models read a folder of images, of which every ``HOLDOUT_EVERY``-th is held
out for measuring fidelity, so a pruned model is never judged on the images it was fitted to.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgeprune.data import calibration_sentences, sample_sentences
from edgeprune.data.images import read_images
from edgeprune.data.inputs import input_batches
from edgeprune.data.text import as_torch
from edgeprune.errors import BadArgumentError, EdgepruneError
from edgeprune.models.base import IMAGE
from edgeprune.models.loading import LoadedModel
from edgeprune.options import PruneOptions

BATCH_SIZE = 16
HOLDOUT_EVERY = 4
"""Every 4th image of a calibration folder is kept for fidelity, never calibrated on."""


def read_texts(path: Path) -> list[str]:
    """One text per non-empty line."""
    try:
        texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise EdgepruneError(f"cannot read calibration text '{path}' ({exc.strerror})",
                             "pass a UTF-8 text file with one text per line") from None
    except UnicodeDecodeError:
        raise EdgepruneError(f"calibration file '{path}' is not UTF-8 text",
                             "pass a UTF-8 text file with one text per line") from None
    if not texts:
        raise EdgepruneError(f"calibration file '{path}' has no text", "put one text per line")
    return texts


def calibration_batches(processor: object, items: list[object],
                        batch_size: int = BATCH_SIZE) -> list[dict[str, torch.Tensor]]:
    """Padded batches of model inputs, in the order of ``items`` (EMA accumulation depends on it)."""
    return [as_torch(arrays) for arrays in input_batches(processor, items, batch_size)]


def calibration_items(dense: LoadedModel, calibration: Path | str | None) -> tuple[list[object], list[object]]:
    """(calibration inputs, held-out fidelity inputs) for ``dense``: texts from a file or the built-in sentences
    (fidelity: the built-in parity sentences), or the images of a folder split ``HOLDOUT_EVERY``."""
    if dense.modality == IMAGE:
        if calibration is None or Path(calibration).is_file():
            raise BadArgumentError(
                "an image model needs calibration images" + (f", and '{calibration}' is a file" if calibration else ""),
                "pass --calibration DIR, a folder of images (every 4th is held out for fidelity)")
        images = read_images(calibration)
        if len(images) < HOLDOUT_EVERY:
            raise BadArgumentError(f"'{calibration}' holds {len(images)} image(s)", "pass at least 4 images")
        held = [i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 for i in range(len(images))]
        return [x for x, h in zip(images, held) if not h], [x for x, h in zip(images, held) if h]
    if calibration is not None and Path(calibration).is_dir():
        raise BadArgumentError(f"--calibration '{calibration}' is a folder but the model reads text",
                               "pass a text file with one text per line")
    return (read_texts(Path(calibration)) if calibration else calibration_sentences()), sample_sentences()


def calibration_batches_for(dense: LoadedModel, options: PruneOptions) -> list[dict[str, torch.Tensor]] | None:
    """Calibration batches when the options' scoring or recovery reads data, else None."""
    if not options.needs_data:
        return None
    items, _ = calibration_items(dense, options.calibration)
    return calibration_batches(dense.processor, items, options.batch_size)

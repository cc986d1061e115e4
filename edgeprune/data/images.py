"""Labeled images for CNN calibration and evaluation, preprocessed the way ImageNet classifiers expect.

Pillow is an optional dependency (``pip install edgeprune[vision]``): only image models need it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprune.errors import EdgepruneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LabeledImages:
    images: torch.Tensor
    """(N, 3, H, W) float32, normalized."""
    labels: torch.Tensor
    """(N,) class indices."""

    def batches(self, size: int) -> list[torch.Tensor]:
        return [self.images[i:i + size] for i in range(0, len(self.images), size)]


def imagenet_preprocess(path: Path, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """Resize the short side to ``resize`` (bilinear), center-crop ``crop``, scale to [0, 1], normalize."""
    try:
        from PIL import Image
    except ImportError:
        raise EdgepruneError("reading images needs Pillow", "pip install 'edgeprune[vision]'") from None
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = resize / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        left, top = (image.width - crop) // 2, (image.height - crop) // 2
        array = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0
    array = (array - np.asarray(IMAGENET_MEAN, dtype=np.float32)) / np.asarray(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def load_imagenet_sample(folder: Path | str, limit: int | None = None) -> LabeledImages:
    """A folder with ``labels.csv`` (filename, …, class_index, …) and ``images/``, as in shared/data/imagenet_sample."""
    folder = Path(folder)
    table = folder / "labels.csv"
    if not table.is_file():
        raise EdgepruneError(f"'{table}' does not exist", "pass a folder holding labels.csv and images/")
    with open(table, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    images = [imagenet_preprocess(folder / "images" / row["filename"]) for row in rows]
    labels = [int(row["class_index"]) for row in rows]
    return LabeledImages(torch.stack(images), torch.tensor(labels))

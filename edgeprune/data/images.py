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
        return preprocess_image(image.convert("RGB"), resize, crop)


def preprocess_image(image: object, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """An RGB ``PIL.Image`` as ImageNet classifiers expect it: short side to ``resize``, center ``crop``, normalized
    (3, crop, crop) float32."""
    from PIL import Image

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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def read_labels(table: Path | str) -> dict[str, int]:
    """Class index per image file name from a CSV with ``filename`` and ``class_index`` columns."""
    table = Path(table)
    try:
        with open(table, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {Path(row["filename"]).name: int(row["class_index"]) for row in rows}
    except OSError as exc:
        raise EdgepruneError(f"cannot read labels '{table}' ({exc.strerror})", "pass a readable CSV file") from None
    except (KeyError, TypeError, ValueError, csv.Error):
        raise EdgepruneError(f"'{table}' is not a labels CSV with filename and class_index columns",
                             "write one row per image: filename,class_index") from None


def image_paths(folder: Path | str) -> list[Path]:
    """The image files in ``folder`` (recursively, sorted by path)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgepruneError(f"image folder '{folder}' does not exist", "pass a folder of images")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise EdgepruneError(f"'{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)})", "pass a folder of images")
    return paths


def read_images(folder: Path | str) -> list[object]:
    """Every image in ``folder`` (recursively, sorted by path) as an RGB ``PIL.Image``."""
    return open_images(image_paths(folder))


def open_images(paths: list[Path]) -> list[object]:
    """The images at ``paths`` as RGB ``PIL.Image``s; an unreadable file is one clear error."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise EdgepruneError("reading images needs Pillow", "pip install 'edgeprune[vision]'") from None
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise EdgepruneError(f"cannot read image '{path}' ({exc})", "remove or replace the file") from None
    return images


def synthetic_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` smooth random RGB images (``size``², uint8): colour blobs from upsampled noise, closer to a photo's
    statistics than white noise. For parity checks when no real images were given — and reported as such."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(count, 8, 8, 3)).astype(np.float32)
    index = np.minimum((np.arange(size) * 8) // size, 7)
    return [np.ascontiguousarray(image[index][:, index]).astype(np.uint8) for image in coarse]

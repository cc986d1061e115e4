"""edgeprune: make neural networks fit edge devices, and prove they fit.

The Python API mirrors the CLI: ``prune`` → ``export`` → ``quantize`` → ``profile`` →
``check``, or all of them with ``optimize``.

Names are imported on first use (PEP 562), so ``import edgeprune`` and ``edgeprune --help``
start without torch. The stages live in packages named for the work they do (``pruning``,
``exporting``, ``quantization``, ``profiling``, ``budgets``), never for the API function, so
importing a stage cannot replace ``edgeprune.prune`` or ``edgeprune.profile`` with a module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Budget": "edgeprune.budgets", "Verdict": "edgeprune.budgets", "check": "edgeprune.budgets",
    "EdgepruneError": "edgeprune.errors",
    "export": "edgeprune.exporting", "export_module": "edgeprune.exporting",
    "LoadedModel": "edgeprune.models.loading", "load_model": "edgeprune.models.loading",
    "load_pruned": "edgeprune.models.loading", "save_pruned": "edgeprune.models.loading",
    "OptimizeSettings": "edgeprune.pipeline", "optimize": "edgeprune.pipeline",
    "ImagePruneSettings": "edgeprune.pipeline.images", "prune_image_model": "edgeprune.pipeline.images",
    "load_pruned_image": "edgeprune.pipeline.images",
    "DistillOptions": "edgeprune.pruning.conv_distill", "SynthesisOptions": "edgeprune.data.synthesize",
    "synthesize_images": "edgeprune.data.synthesize",
    "SweepOptions": "edgeprune.fleet", "sweep": "edgeprune.fleet",
    "DeviceProfile": "edgeprune.devices", "load_profile": "edgeprune.devices",
    "Measurement": "edgeprune.profiling", "Estimate": "edgeprune.profiling", "profile": "edgeprune.profiling",
    "estimate": "edgeprune.profiling",
    "PruningPlan": "edgeprune.models.plan", "prune": "edgeprune.pruning",
    "ChannelPlan": "edgeprune.pruning.channels", "prune_channels": "edgeprune.pruning.channels",
    "prune_loaded": "edgeprune.pruning.loaded",
    "quantize": "edgeprune.quantization",
}

__all__ = ["Budget", "ChannelPlan", "DeviceProfile", "DistillOptions", "EdgepruneError", "Estimate",
           "ImagePruneSettings", "LoadedModel", "Measurement", "OptimizeSettings", "PruningPlan", "SweepOptions",
           "SynthesisOptions", "Verdict", "check", "estimate", "export", "export_module", "load_model", "load_profile",
           "load_pruned", "load_pruned_image", "optimize", "profile", "prune", "prune_channels", "prune_image_model",
           "prune_loaded", "quantize", "save_pruned", "sweep", "synthesize_images"]

if TYPE_CHECKING:
    from edgeprune.budgets import Budget, Verdict, check
    from edgeprune.data.synthesize import SynthesisOptions, synthesize_images
    from edgeprune.devices import DeviceProfile, load_profile
    from edgeprune.errors import EdgepruneError
    from edgeprune.exporting import export, export_module
    from edgeprune.fleet import SweepOptions, sweep
    from edgeprune.models.loading import LoadedModel, load_model, load_pruned, save_pruned
    from edgeprune.models.plan import PruningPlan
    from edgeprune.pipeline import OptimizeSettings, optimize
    from edgeprune.pipeline.images import ImagePruneSettings, load_pruned_image, prune_image_model
    from edgeprune.profiling import Estimate, Measurement, estimate, profile
    from edgeprune.pruning import prune
    from edgeprune.pruning.channels import ChannelPlan, prune_channels
    from edgeprune.pruning.conv_distill import DistillOptions
    from edgeprune.pruning.loaded import prune_loaded
    from edgeprune.quantization import quantize


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeprune' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

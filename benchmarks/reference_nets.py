"""The reference architectures of ``published_latencies.yaml``, built in PyTorch from their papers' layer tables.

torchvision does not import beside torch 2.13 here, so ResNet, MobileNetV2/V3 and SqueezeNet are
written out from the papers (He et al. 2015 table 1; Sandler et al. 2018 table 2; Howard et al.
2019 tables 1-2; Iandola et al. 2016, v1.1 as in the SqueezeNet repository). EfficientNet-B0 /
-Lite0 come from ``efficientnet_lite_pytorch``, ViT-B/32 from a transformers config. Weights are
random (seeded): latency depends on the shapes only. ``build(name)`` returns (module, input shape).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
          ) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module | None, relu: bool) -> None:
        super().__init__()
        self.body, self.shortcut, self.relu = body, shortcut, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x) + (self.shortcut(x) if self.shortcut is not None else x)
        return torch.relu(y) if self.relu else y


def resnet(depth: int) -> nn.Module:
    """ResNet-18 (basic blocks) or ResNet-50 (bottlenecks), 1000 classes."""
    bottleneck = depth == 50
    counts = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
    layers: list[nn.Module] = [_conv(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    c_in = 64
    for stage, count in enumerate(counts):
        width = 64 * 2**stage
        c_out = width * 4 if bottleneck else width
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            if bottleneck:
                body = nn.Sequential(_conv(c_in, width, 1), _conv(width, width, 3, stride),
                                     _conv(width, c_out, 1, act=None))
            else:
                body = nn.Sequential(_conv(c_in, width, 3, stride), _conv(width, width, 3, act=None))
            shortcut = _conv(c_in, c_out, 1, stride, act=None) if stride != 1 or c_in != c_out else None
            layers.append(_Residual(body, shortcut, relu=True))
            c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1000))


def mobilenet_v2() -> nn.Module:
    """MobileNetV2 width 1.0: inverted residuals (t, c, n, s) of the paper's table 2."""
    layers: list[nn.Module] = [_conv(3, 32, 3, 2, act=nn.ReLU6)]
    c_in = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            stride, hidden = (s if i == 0 else 1), c_in * t
            expand = [_conv(c_in, hidden, 1, act=nn.ReLU6)] if t != 1 else []
            body = nn.Sequential(*expand, _conv(hidden, hidden, 3, stride, hidden, act=nn.ReLU6),
                                 _conv(hidden, c, 1, act=None))
            layers.append(_Residual(body, None, relu=False) if stride == 1 and c_in == c else body)
            c_in = c
    return nn.Sequential(*layers, _conv(c_in, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(1280, 1000))


def _divisible(value: float, by: int = 8) -> int:
    return max(by, int(value + by / 2) // by * by)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _divisible(channels / 4)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), nn.ReLU(),
                                  nn.Conv2d(squeezed, channels, 1), nn.Hardsigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


V3_LARGE = ((3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
            (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
            (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
            (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
            (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1))
"""(kernel, expansion, out, squeeze-excite, nonlinearity, stride) of the paper's table 1."""
V3_SMALL = ((3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
            (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
            (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
            (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1))
"""The same for MobileNetV3-Small (table 2)."""


def mobilenet_v3(large: bool) -> nn.Module:
    table, last, head = (V3_LARGE, 960, 1280) if large else (V3_SMALL, 576, 1024)
    layers: list[nn.Module] = [_conv(3, 16, 3, 2, act=nn.Hardswish)]
    c_in = 16
    for k, exp, c, se, nl, s in table:
        act = nn.ReLU if nl == "RE" else nn.Hardswish
        parts: list[nn.Module] = [_conv(c_in, exp, 1, act=act)] if exp != c_in else []
        parts.append(_conv(exp, exp, k, s, exp, act=act))
        if se:
            parts.append(_SqueezeExcite(exp))
        parts.append(_conv(exp, c, 1, act=None))
        body = nn.Sequential(*parts)
        layers.append(_Residual(body, None, relu=False) if s == 1 and c_in == c else body)
        c_in = c
    return nn.Sequential(*layers, _conv(c_in, last, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(last, head), nn.Hardswish(), nn.Linear(head, 1000))


class _Fire(nn.Module):
    def __init__(self, c_in: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(c_in, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


def squeezenet() -> nn.Module:
    """SqueezeNet v1.1 (the SqueezeNet repository's 2.4x cheaper revision, which ncnn's benchmark ships)."""
    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    return nn.Sequential(nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool, _Fire(64, 16, 64), _Fire(128, 16, 64), pool,
                         _Fire(128, 32, 128), _Fire(256, 32, 128), pool, _Fire(256, 48, 192), _Fire(384, 48, 192),
                         _Fire(384, 64, 256), _Fire(512, 64, 256), nn.Conv2d(512, 1000, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def efficientnet(name: str) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(name)
    model.set_swish(memory_efficient=False)  # the memory-efficient Swish is an autograd Function ONNX cannot export
    return model


class _VitLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        self.vit = ViTForImageClassification(ViTConfig(image_size=384, patch_size=32, num_labels=1000))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=pixels).logits


BUILDERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (lambda: resnet(18), (1, 3, 224, 224)),
    "resnet50": (lambda: resnet(50), (1, 3, 224, 224)),
    "mobilenet_v2": (mobilenet_v2, (1, 3, 224, 224)),
    "mobilenet_v3_large": (lambda: mobilenet_v3(large=True), (1, 3, 224, 224)),
    "mobilenet_v3_small": (lambda: mobilenet_v3(large=False), (1, 3, 224, 224)),
    "squeezenet": (squeezenet, (1, 3, 227, 227)),
    "efficientnet_b0": (lambda: efficientnet("efficientnet-b0"), (1, 3, 224, 224)),
    "efficientnet_lite0": (lambda: efficientnet("efficientnet-lite0"), (1, 3, 224, 224)),
    "vit_b_32": (_VitLogits, (1, 3, 384, 384)),
}


def build(name: str) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """(model in eval mode with seeded random weights, NCHW input shape) of one reference architecture."""
    factory, shape = BUILDERS[name]
    torch.manual_seed(0)
    return factory().eval(), shape

"""How well the cost model predicts this host: 1 thread from 2, 2 from 1, int8 from fp32, fp32 from int8.

Builds a zoo of ONNX models (all-MiniLM-L6-v2 dense and pruned; a BERT-base-size and a
MobileBERT-size encoder and a ViT built from transformers configs; a small ResNet-style CNN,
a depthwise MobileNet-style CNN and EfficientNet-Lite0 with its ImageNet weights; each fp32
and dynamic int8), measures every one at 1
and 2 threads (batch 1, seq 128 or 224×224), profiles its operators, and predicts each
measured figure from the others through the cost model alone. Prints prediction vs
measurement per model, the share within ±10% and ±20% (target: ≥90% within ±10%; 1-thread
fp32↔int8 rows apart from thread-scaling rows, whose 2-thread timings are bimodal here), and the
Spearman rank correlation of predicted vs measured latency next to a FLOPs-only baseline
(target ≥0.95).

    python benchmarks/predict_selfcheck.py
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeprune import evaluate
from edgeprune.devices import detect_host
from edgeprune.exporting import export
from edgeprune.models import adapter_for
from edgeprune.models.loading import LoadedModel, load_model
from edgeprune.models.pretrained import efficientnet_lite0
from edgeprune.profiling import compare_latency
from edgeprune.profiling.characterize import host_rates
from edgeprune.profiling.memory import MemoryStats, measure_peak_memory
from edgeprune.profiling.operators import OperatorProfile, profile_operators
from edgeprune.profiling.predict import predict_latency, swap_precision
from edgeprune.pruning import apply_plan, make_plan
from edgeprune.quantization import dynamic_int8, int8_scheme


def text_encoders(work: Path) -> dict[str, Path]:
    from transformers import BertConfig, BertModel, MobileBertConfig, MobileBertModel

    dense = load_model(None)
    plan = make_plan(dense.model, keep_flops=0.6)
    pruned = apply_plan(copy.deepcopy(dense.model), adapter_for(dense.model), plan).eval()
    torch.manual_seed(0)
    built = {
        "minilm": dense,
        "minilm-pruned": LoadedModel(pruned, dense.processor, dense.path, dense.task, dense.pooling, plan),
        "bert-base": LoadedModel(BertModel(BertConfig()).eval(), dense.processor, dense.path, dense.task, "mean"),
    }
    paths = {name: export(model, work / name, atol=1e-2).onnx_path for name, model in built.items()}
    # no pruning adapter for MobileBERT, so edgeprune's export refuses it: exported as its own encoder, seq 128
    paths["mobilebert"] = work / "mobilebert.onnx"
    ids = torch.ones(1, 128, dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(MobileBertModel(MobileBertConfig()).eval(), (ids, ids, torch.zeros_like(ids)),
                          str(paths["mobilebert"]), input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={name: {0: "batch", 1: "sequence"} for name in
                                        ("input_ids", "attention_mask", "token_type_ids")})
    return paths


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.ModuleList([self._block(32), self._block(32)])
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, 1000)

    @staticmethod
    def _block(c: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1),
                             nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(self.down(x).mean(dim=(2, 3)))


class MobileNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers, c = [nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU6()], 16
        for out, stride in ((24, 2), (32, 2), (64, 2), (96, 1), (160, 2)):
            layers += [nn.Conv2d(c, c * 4, 1), nn.ReLU6(), nn.Conv2d(c * 4, c * 4, 3, stride, 1, groups=c * 4),
                       nn.ReLU6(), nn.Conv2d(c * 4, out, 1)]
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def image_models(work: Path) -> dict[str, Path]:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536),
                   add_pooling_layer=False).eval()
    paths = {}
    for name, model in (("vit-small", vit), ("resnet-small", SmallResNet().eval()),
                        ("mobilenet-ish", MobileNetish().eval()), ("efficientnet-lite0", efficientnet_lite0())):
        path = work / f"{name}.onnx"
        with torch.no_grad():
            torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), input_names=["pixel_values"],
                              output_names=["out"], opset_version=17, dynamo=False)
        paths[name] = path
    return paths


def within(predicted: float, measured: float, tolerance: float) -> bool:
    return abs(predicted / measured - 1) <= tolerance


def main() -> None:
    started = time.perf_counter()
    host = detect_host()
    host_rates(2, refresh=True)  # 1 and 2 threads characterized side by side, in the same sitting as the zoo
    scheme = int8_scheme(host)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = {**text_encoders(work), **image_models(work)}
        zoo = {}
        for name, path in fp32.items():
            zoo[f"{name} fp32"] = path
            zoo[f"{name} int8"] = dynamic_int8(path, work / f"{name}-int8.onnx", scheme)
        names = list(zoo)
        measured = {t: dict(zip(names, (s.p50 for s in compare_latency(list(zoo.values()), threads=t, rounds=3,
                                                                        runs=20))))
                    for t in (1, 2)}
        ops: dict[tuple[str, int], OperatorProfile] = {
            (name, t): profile_operators(path, threads=t, runs=10) for name, path in zoo.items() for t in (1, 2)}
        peaks = {name: measure_peak_memory(path, threads=1) for name, path in zoo.items()}

    rows = []
    for name in names:
        for src, dst in ((2, 1), (1, 2)):
            p = predict_latency(ops[name, src], host, threads=dst, host=host, measured_ms=measured[src][name])
            rows.append((name, f"{src}T → {dst}T", p.latency_ms, measured[dst][name]))
        base, precision = name.rsplit(" ", 1)
        other = f"{base} {'int8' if precision == 'fp32' else 'fp32'}"
        swapped = swap_precision(ops[name, 1], to_int8=precision == "fp32")
        p = predict_latency(swapped, host, threads=1, host=host, measured_ms=measured[1][name] * swapped.wall_ms
                            / ops[name, 1].wall_ms)
        rows.append((other, f"{precision} → {other.rsplit(' ', 1)[1]}", p.latency_ms, measured[1][other]))

    print(f"{'model':<22}{'prediction':<16}{'predicted ms':>13}{'measured ms':>12}{'error':>8}")
    for model, how, predicted, actual in rows:
        print(f"{model:<22}{how:<16}{predicted:>13.2f}{actual:>12.2f}{predicted / actual - 1:>+8.1%}")
    groups = {"all": rows, "1-thread fp32 <-> int8": [r for r in rows if "T" not in r[1]],
              "1 <-> 2 threads": [r for r in rows if "T" in r[1]]}
    for group, members in groups.items():  # 2-thread timings on these VMs are bimodal: their rows apart
        shares = [f"±{t:.0%}: {np.mean([within(p, m, t) for _, _, p, m in members]):.0%}" for t in (0.10, 0.20)]
        print(f"within {', '.join(shares)} of {len(members)} predictions ({group})")
    # Rank quality at 1 thread: the cost model (from the 2-thread profile) vs FLOPs alone.
    predicted_1t = [predict_latency(ops[n, 2], host, threads=1, host=host, measured_ms=measured[2][n]).latency_ms
                    for n in names]
    flops = [sum(op.work for op in ops[n, 1].ops if op.op_class.startswith("gemm")) for n in names]
    actual_1t = [measured[1][n] for n in names]
    print(f"Spearman vs measured 1-thread latency over {len(names)} models: cost model "
          f"{evaluate.spearman(np.array(predicted_1t), np.array(actual_1t)):.3f}, FLOPs only "
          f"{evaluate.spearman(np.array(flops), np.array(actual_1t)):.3f}")
    memory_check(names, ops, peaks)
    print(f"wall time {(time.perf_counter() - started) / 60:.1f} min")


def memory_check(names: list[str], ops: dict[tuple[str, int], OperatorProfile], peaks: dict[str, MemoryStats]) -> None:
    """Peak memory against a model of its parts: weights of GEMM-class nodes in fp32 and in int8 (onnxruntime packs
    those, and with glibc the load-time copies it frees stay resident), other weights (embedding tables), peak live
    activations, and a constant; fitted on relative error, leave-one-out, for glibc's default allocator and for one
    that returns freed blocks at once. Then how far the two allocators' peaks lie apart: the spread a device's
    memory band must cover, since which allocator a device runs is not known here."""
    mib = 2.0**20

    def features(name: str) -> list[float]:
        profile = ops[name, 1]
        gemm = [op for op in profile.ops if op.op_class.startswith("gemm")]
        fp32 = sum(op.weight_bytes for op in gemm if op.op_class == "gemm_fp32")
        int8 = sum(op.weight_bytes for op in gemm if op.op_class == "gemm_int8")
        return [fp32 / mib, int8 / mib, max(profile.weight_bytes - fp32 - int8, 0.0) / mib,
                profile.peak_activation_bytes / mib, 1.0]

    x = np.array([features(n) for n in names])
    print(f"{'model':<26}{'GEMM fp32':>10}{'GEMM int8':>10}{'other w':>8}{'live act':>9}{'default':>9}"
          f"{'releasing':>10}{'LOO default':>12}{'LOO releasing':>14}  (MiB)")
    measured = {"default": np.array([peaks[n].peak_over_baseline_mb for n in names]),
                "releasing": np.array([peaks[n].released_over_baseline_mb for n in names])}
    predicted = {}
    for allocator, y in measured.items():
        predicted[allocator] = np.empty(len(names))
        for i in range(len(names)):
            rest = np.arange(len(names)) != i
            coef, *_ = np.linalg.lstsq(x[rest] / y[rest, None], np.ones(rest.sum()), rcond=None)
            predicted[allocator][i] = x[i] @ coef
    for i, name in enumerate(names):
        print(f"{name:<26}" + "".join(f"{v:>{w}.1f}" for v, w in zip(x[i, :4], (10, 10, 8, 9)))
              + f"{measured['default'][i]:>9.1f}{measured['releasing'][i]:>10.1f}"
              + f"{predicted['default'][i] / measured['default'][i] - 1:>+12.1%}"
              + f"{predicted['releasing'][i] / measured['releasing'][i] - 1:>+14.1%}")
    for allocator, y in measured.items():
        print(f"memory model within ±15% (leave-one-out, {allocator} allocator): "
              f"{np.mean(np.abs(predicted[allocator] / y - 1) <= 0.15):.0%} of {len(names)}")
    gap = measured["default"] / measured["releasing"] - 1
    print(f"default allocator over releasing: median {np.median(gap):+.0%}, max {gap.max():+.0%}; "
          f"{np.mean(measured['releasing'] < 0.85 * measured['default']):.0%} of models peak more than 15% lower "
          f"with the releasing allocator (a ±15% band around the default peak would miss them)")


if __name__ == "__main__":
    main()

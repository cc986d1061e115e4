"""Every adapter family at its real size: dense fp32 vs dense int8 vs pruned to 2/3 of its MACs + int8, 1 thread.

Random-weight models built from the real configs (distilbert-base, roberta-base,
vit-base-patch16-224), which is enough for latency and export parity; all-MiniLM-L6-v2 is the
real packaged model, pruned with the CLI's defaults (Fisher + least squares) and reported with
its cosine fidelity. Each model goes through the same path as `edgeprune optimize`: parity-checked
export (real images for ViT), the never-slower int8 choice among the dynamic forms (``FORMS``), and
the three models timed side by side in interleaved rounds at one thread (batch 1; seq 128 for
text, 224² for ViT).

    python benchmarks/architectures.py [--runs 30] [--only vit]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from edgeprune import evaluate
from edgeprune.data.inputs import input_batches
from edgeprune.exporting import export
from edgeprune.models.loading import default_model_path, load_model
from edgeprune.options import PruneOptions
from edgeprune.profiling import compare_latency
from edgeprune.pruning import kept_macs_fraction
from edgeprune.pruning.calibration import calibration_items
from edgeprune.pruning.loaded import prune_loaded
from edgeprune.quantization import quantize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGES = SHARED / "imagenet_sample" / "images"
KEEP = 2 / 3
FORMS = ("int8", "int8-fused")
"""Dynamic int8, with and without onnxruntime's transformer fusion: static int8 forms lose on transformers on these
CPUs (all-MiniLM-L6-v2: static QDQ 12.0 ms vs dynamic 7.0 ms vs fp32 15.0 ms at 1 thread), and calibrating and
timing them on base-size models takes most of this benchmark's time."""
ARCHITECTURES = {
    "distilbert-base": ("DistilBertConfig", "DistilBertModel", dict(vocab_size=30522)),
    "roberta-base": ("RobertaConfig", "RobertaModel", dict(vocab_size=50265, max_position_embeddings=514,
                                                           type_vocab_size=1, pad_token_id=1)),
    "vit-base-patch16-224": ("ViTConfig", "ViTModel", dict(image_size=224, patch_size=16)),
}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def build(name: str, work: Path) -> Path:
    """A random-weight model of the real size, saved with the MiniLM tokenizer (or a ViT image processor)."""
    import transformers

    config_name, class_name, kwargs = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(getattr(transformers, config_name)(**kwargs)).eval()
    model.save_pretrained(work)
    if class_name.startswith("ViT"):
        transformers.ViTImageProcessor().save_pretrained(work)
    else:
        transformers.AutoTokenizer.from_pretrained(default_model_path(),
                                                   model_input_names=["input_ids", "attention_mask"]
                                                   ).save_pretrained(work)
    return work


def measure(name: str, path: Path, work: Path, runs: int) -> dict[str, object]:
    dense = load_model(path)
    real = name == "all-MiniLM-L6-v2"
    calibration = str(IMAGES) if dense.modality == "image" else None
    fit, held = calibration_items(dense, calibration)
    parity = None if dense.modality == "text" else held[:8]
    options = PruneOptions() if real else PruneOptions(criterion="magnitude", recover="none", calibration=calibration)
    started = time.perf_counter()
    pruned = prune_loaded(dense, keep_flops=KEEP, options=options)
    prune_s = time.perf_counter() - started
    dense_onnx = export(dense, work / "dense", inputs=parity)
    pruned_onnx = export(pruned, work / "pruned", inputs=parity)
    feeds = {} if dense.modality == "text" else {"calibration": input_batches(dense.processor, fit[:32], 8),
                                                 "check": input_batches(dense.processor, held[:16], 8)}
    dense_q = quantize(dense_onnx.onnx_path, work / "dense-int8", forms=FORMS, **feeds)
    pruned_q = quantize(pruned_onnx.onnx_path, work / "pruned-int8", forms=FORMS, **feeds)
    stats = compare_latency([dense_onnx.onnx_path, dense_q.onnx_path, pruned_q.onnx_path], threads=1, rounds=5,
                            runs=runs)
    fidelity = None
    if real:
        reference = evaluate.torch_encoder(dense)(held)
        fidelity = evaluate.cosine_fidelity(reference, evaluate.onnx_encoder(pruned_q.onnx_path, dense.processor,
                                                                             dense.pooling)(held))
    return {"name": name, "kept_macs": kept_macs_fraction(pruned.model, pruned.plan.dense),
            "parity": max(dense_onnx.max_abs_diff, pruned_onnx.max_abs_diff), "parity_inputs": dense_onnx.parity_inputs,
            "dense_ms": stats[0].p50, "dense_int8_ms": stats[1].p50, "dense_form": dense_q.chosen,
            "pruned_int8_ms": stats[2].p50, "pruned_form": pruned_q.chosen, "fidelity": fidelity, "prune_s": prune_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model per round (5 rounds)")
    parser.add_argument("--only", default=None, help="one architecture name")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    sum(range(10**6))
    loop_s = time.perf_counter() - started
    print(f"CPU: {cpu_name()}; a 10^6-addition Python loop took {loop_s:.3f} s (well under 0.1 s = not throttled)")
    names = [args.only] if args.only else [*ARCHITECTURES, "all-MiniLM-L6-v2"]
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            path = default_model_path() if name == "all-MiniLM-L6-v2" else build(name, work / "model")
            rows.append(measure(name, path, work, args.runs))
            row = rows[-1]
            print(f"  {name}: done ({row['dense_ms']:.1f} / {row['pruned_int8_ms']:.1f} ms)", flush=True)
    header = (f"{'architecture':<22}{'kept MACs':>10}{'parity |Δ|':>12}{'dense fp32':>11}{'dense int8':>11}"
              f"{'pruned int8':>12}{'vs fp32':>8}{'vs int8':>8}  forms (dense / pruned)")
    print("\np50 ms at 1 thread, batch 1 (text: seq 128; ViT: 224x224), three models interleaved in 5 rounds")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:<22}{r['kept_macs']:>10.3f}{r['parity']:>12.2e}{r['dense_ms']:>11.2f}"
              f"{r['dense_int8_ms']:>11.2f}{r['pruned_int8_ms']:>12.2f}{r['dense_ms'] / r['pruned_int8_ms']:>7.2f}x"
              f"{r['dense_int8_ms'] / r['pruned_int8_ms']:>7.2f}x  {r['dense_form']} / {r['pruned_form']}")
    for r in rows:
        extra = f", pruned int8 cosine to dense {r['fidelity']:.4f}" if r["fidelity"] is not None else ""
        print(f"{r['name']}: parity on {r['parity_inputs']} inputs; pruning {r['prune_s']:.1f} s{extra}")


if __name__ == "__main__":
    main()

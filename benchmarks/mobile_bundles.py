"""Phone bundles of the pruned all-MiniLM-L6-v2: Android (Snapdragon 8 Gen 3) and iPhone (A17 Pro).

Prunes MiniLM to 60% of its encoder MACs (Fisher, least-squares recovery), exports it, lets
``quantize`` choose its form on this host, packages it for both phone profiles, and prints per
bundle: files and sizes, the ORT-vs-ONNX difference on the built-in sample sentences (real
tokenized text, padded batches), and each execution provider's partition report. No timing:
it may run beside other work (about 2 minutes on 2 cores).

    python benchmarks/mobile_bundles.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import edgeprune
from edgeprune import runtime
from edgeprune.data import sample_sentences
from edgeprune.data.inputs import input_batches
from edgeprune.packaging import package

PROFILES = ("android-flagship-sd8gen3", "iphone-a17-pro")


def max_difference(onnx_path: Path, ort_path: Path, processor: object) -> float:
    """Largest |ORT − ONNX| over every output of every batch of the sample sentences."""
    sessions = [runtime.session(path) for path in (onnx_path, ort_path)]
    worst = 0.0
    for batch in input_batches(processor, sample_sentences(), 8):
        want, got = (sess.run(None, runtime.feed(sess, batch)) for sess in sessions)
        worst = max(worst, *(float(np.max(np.abs(a - b))) for a, b in zip(want, got)))
    return worst


def main() -> None:
    loaded = edgeprune.load_model()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pruned = edgeprune.prune_loaded(loaded, keep_flops=0.6)
        plan = pruned.plan
        exported = edgeprune.export(pruned, tmp / "onnx")
        shipped = edgeprune.quantize(exported.onnx_path, tmp / "quantized", "host")
        print(f"pruned MiniLM (60% of encoder MACs, {plan.criterion}, {plan.recovery}): fp32 "
              f"{exported.onnx_path.stat().st_size / 1e6:.1f} MB; shipped form {shipped.chosen}, "
              f"{shipped.size_after_mb:.1f} MB")
        for name in PROFILES:
            bundle = package(shipped.onnx_path, name, tmp / name)
            manifest = bundle.manifest
            print(f"\n{name}: bundle {manifest['bundle_size_mb']:.2f} MB; "
                  f"{manifest['config']['file']}: {manifest['config']['operators']} operators")
            for model in manifest["models"]:
                diff = max_difference(shipped.onnx_path, bundle.out_dir / model["file"], loaded.processor)
                print(f"  {model['file']}: {model['size_mb']:.2f} MB, max |ORT - ONNX| on "
                      f"{len(sample_sentences())} sample sentences {diff:.2e}")
            print(f"  {'provider':<9}{'nodes':>10}{'partitions':>12}  verdict  with fixed shapes")
            for ep in manifest["execution_providers"]:
                fixed = ep["with_fixed_shapes"]
                print(f"  {ep['provider']:<9}{ep['supported_nodes']:>5}/{ep['nodes']:<4}{ep['partitions']:>12}  "
                      f"{ep['verdict']:<7}  {fixed['supported_nodes']}/{fixed['nodes']} in {fixed['partitions']}: "
                      f"{fixed['verdict']}")
                print(f"  {'':<9}falls back: {', '.join(ep['unsupported_ops']) or 'nothing'}")
            print(f"  fixed-shape variant: {manifest['fixed_shape_variant']['why']}")


if __name__ == "__main__":
    main()

"""int4 blocks on all-MiniLM-L6-v2: file size, fidelity and STS-B of each block setting.

The blocks are chosen by fidelity on the built-in texts (edgeprune/data/*.txt: mean cosine of the
token states to fp32, the quantizer's own measure) among the settings whose file is within 12 MB;
STS-B dev is reported for fp32, the int4 form before this choice and the chosen one, not used to
choose. No timing: it may run beside other work (about 4 minutes on 2 cores).

    python benchmarks/minilm_int4.py [--stsb ../shared/data/stsb/sts-dev.csv]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnx

import edgeprune
from edgeprune import runtime
from edgeprune.data import calibration_sentences, sample_sentences
from edgeprune.data.inputs import input_batches
from edgeprune.evaluate import onnx_encoder, stsb_spearman
from edgeprune.files import size_mb
from edgeprune.quantization.fidelity import first_outputs, mean_cosine
from edgeprune.quantization.forms import INT4_DEFAULTS, Int4Options, weight_only_int4
from edgeprune.quiet import quiet

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-dev.csv"
TARGET_MB = 12.0
SWEEP = [Int4Options(block_size=block, embedding_block=1024) for block in (32, 64, 128, 256)] + [
    Int4Options(block_size=128, embedding_block=block) for block in (32, 256, 512, 2048)]
"""MatMul blocks at the default embedding block, then embedding blocks at the default MatMul block."""


def int4_before(src: Path, dst: Path) -> Path:
    """The int4 form before the blocks were chosen, the baseline: blocks of 32, symmetric (no zero points), the
    embedding table in blocks along each token's row."""
    from onnxruntime.quantization import matmul_nbits_quantizer, quant_utils

    config = matmul_nbits_quantizer.DefaultWeightOnlyQuantConfig(
        block_size=32, is_symmetric=True, accuracy_level=4, quant_format=quant_utils.QuantFormat.QOperator,
        op_types_to_quantize=("MatMul", "Gather"), quant_axes=(("MatMul", 0), ("Gather", 1)), bits=4)
    with quiet():
        quantizer = matmul_nbits_quantizer.MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stsb", type=Path, default=STSB)
    args = parser.parse_args()

    loaded = edgeprune.load_model()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = edgeprune.export(loaded, Path(tmp) / "fp32").onnx_path
        sess = runtime.session(fp32)
        texts = calibration_sentences() + sample_sentences()
        feeds = [runtime.feed(sess, arrays) for arrays in input_batches(loaded.processor, texts, 8)]
        reference = first_outputs(fp32, feeds)
        rows = [("fp32", "-", "-", fp32), ("int4 before", "32 sym", "32 along a row",
                                           int4_before(fp32, Path(tmp) / "before.onnx"))]
        for options in SWEEP:
            name = "int4 (default)" if options == INT4_DEFAULTS else "int4"
            path = weight_only_int4(fp32, Path(tmp) / f"{options.block_size}-{options.embedding_block}.onnx", options)
            rows.append((name, str(options.block_size), str(options.embedding_block), path))

        print(f"all-MiniLM-L6-v2; cosine: token states vs fp32 on the {len(texts)} built-in texts; STS-B dev "
              f"Spearman x100 ({args.stsb.name}), for fp32 and the int4 before and after")
        header = f"{'form':<16}{'MatMul block':>13}{'embedding block':>17}{'size MB':>9}{'cosine':>9}{'STS-B':>8}"
        print(header)
        print("-" * len(header))
        for name, matmul, embedding, path in rows:
            cosine = mean_cosine(reference, first_outputs(path, feeds))
            encoder = onnx_encoder(path, loaded.processor, loaded.pooling)
            stsb = "" if name == "int4" else f"{stsb_spearman(encoder, args.stsb):.2f}"
            fits = "" if size_mb(path) <= TARGET_MB or name == "fp32" else " (over 12 MB)"
            print(f"{name:<16}{matmul:>13}{embedding:>17}{size_mb(path):>9.2f}{cosine:>9.4f}{stsb:>8}{fits}",
                  flush=True)


if __name__ == "__main__":
    main()

"""The int8 forms onnxruntime can make of a graph, in the flavour the target's instruction set runs well.

Dynamic int8 quantizes weights and computes activation ranges at run time (MatMulInteger /
DynamicQuantizeMatMul); static int8 fixes activation ranges from calibration inputs, written
as QDQ pairs (fused by the runtime) or as QOperator nodes (QLinearConv, QLinearMatMul). Any of
them can leave chosen op types or nodes in fp32: that is how the never-slower quantization
falls back where int8 loses speed or quality.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeprune import runtime
from edgeprune.errors import BadArgumentError, ModelLoadError
from edgeprune.int8 import Int8Scheme
from edgeprune.quiet import quiet

Feed = dict[str, np.ndarray]
"""One model input batch: input name → array."""

COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
"""Op types whose int8 kernels decide speed; the others only move data between them."""


STATIC_METHODS = ("minmax", "entropy", "percentile")


class FeedReader:
    """onnxruntime's calibration-data-reader protocol over a list of feeds."""

    def __init__(self, feeds: list[Feed]) -> None:
        self.items = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self.items, None)

    def __iter__(self) -> Iterator[Feed]:
        return self.items


def static_int8(src: Path, dst: Path, scheme: Int8Scheme, calibration: list[Feed], method: str = "minmax", *,
                fmt: str = "qdq", op_types: Sequence[str] | None = None, exclude: Sequence[str] = (),
                cache: Path | None = None) -> Path:
    """onnxruntime's static int8 of ``src``: activation ranges from the ``calibration`` feeds, weights per
    channel, in ``scheme``'s flavour; ``fmt`` ``qdq`` or ``qoperator``; only ``op_types`` (default: all it
    can), never the nodes named in ``exclude``. ``cache`` (a JSON file) keeps the ranges, so further forms of
    the same graph skip calibration, the slow part.

    Convolutions need a static form: dynamic int8 turns them into ConvInteger, which is slower
    than fp32 Conv on x86; a QDQ Conv runs as a fused QLinearConv.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    if method not in methods:
        raise ModelLoadError(f"unknown calibration method '{method}'", f"use one of: {', '.join(methods)}")
    if fmt not in formats:
        raise ModelLoadError(f"unknown quantization format '{fmt}'", f"use one of: {', '.join(formats)}")
    if not calibration:
        raise ModelLoadError("static int8 needs calibration inputs and got none", "pass a few real input batches")
    with quiet():
        quantize_static(src, dst, FeedReader(calibration), quant_format=formats[fmt],
                        per_channel=scheme.per_channel, reduce_range=scheme.reduce_range,
                        calibrate_method=methods[method], nodes_to_exclude=list(exclude),
                        calibration_cache_path=cache,
                        op_types_to_quantize=list(op_types) if op_types is not None else None,
                        weight_type=QuantType.QInt8 if scheme.weight_type == "int8" else QuantType.QUInt8,
                        activation_type=QuantType.QUInt8 if scheme.activation_type == "uint8" else QuantType.QInt8)
    return dst


INT4_BLOCKS = (16, 32, 64, 128, 256)
"""The MatMul blocks onnxruntime's int4 kernels (MLAS) quantize and run."""


@dataclass(frozen=True)
class Int4Options:
    """How many weights share one int4 scale (fp32) and zero point (4 bits): a larger block spends fewer bytes on
    scales and keeps less accuracy. In blocks of 32 the scales were a fifth of all-MiniLM-L6-v2's int4 file (14.3 MB).

    The defaults keep that file within 12 MB at the highest fidelity on the built-in texts (mean token-state cosine
    to fp32), measured by benchmarks/minilm_int4.py: 11.94 MB, cosine 0.960, STS-B dev 86.67 (fp32 86.72, blocks of
    32: 86.61). MatMul blocks of 64 make 12.30 MB; embedding blocks of 512 are as faithful (within a standard error
    per sentence) at 11.99 MB, of 2048 measurably less.
    """

    block_size: int = 128
    """MatMul weights per scale, along the input axis (K): one of ``INT4_BLOCKS``. A model whose shortest weight
    column is shorter gets the largest block that fits it (a longer one would only pad every column with zeros)."""
    embedding_block: int = 1024
    """Embedding-table rows per scale, for each hidden unit (blocks run along the vocabulary: a hidden unit's values
    share a range, a token's do not — fidelity 0.996 with 1024 rows, as with blocks of 32 along a token's row); a
    power of two ≥ 16."""

    def __post_init__(self) -> None:
        if self.block_size not in INT4_BLOCKS:
            raise BadArgumentError(f"--int4-block {self.block_size} is not a block onnxruntime's int4 MatMul takes",
                                   f"pass one of {', '.join(map(str, INT4_BLOCKS))}")
        if self.embedding_block < 16 or self.embedding_block & (self.embedding_block - 1):
            raise BadArgumentError(f"--int4-embedding-block {self.embedding_block} is not a power of two ≥ 16",
                                   "pass one such as 256 or 1024")


INT4_DEFAULTS = Int4Options()


def weight_only_int4(src: Path, dst: Path, options: Int4Options = INT4_DEFAULTS, *, embeddings: bool = True) -> Path:
    """onnxruntime's int4 weight-only form of ``src``: MatMul weights in asymmetric blocks (``MatMulNBits``, int8
    arithmetic where the CPU has it) and, with ``embeddings``, the embedding tables (``GatherBlockQuantized``) —
    the largest tensor of a small encoder or an LLM — in blocks along the vocabulary, as ``options`` sizes them.
    Activations stay fp32: the saving is bytes, which is what bounds a decoder's per-token step and what a phone's
    storage counts.

    Asymmetric blocks: a zero point costs 4 bits per block and lifted all-MiniLM-L6-v2's fidelity at block 128 from
    0.954 to 0.960. Scales stay fp32: both ops take them in their activations' type.
    """
    from onnxruntime.quantization import matmul_nbits_quantizer, quant_utils

    model = onnx.load(str(src))
    blocks = {"MatMul": _matmul_block(model.graph, options.block_size)}
    if embeddings:
        blocks["Gather"] = options.embedding_block
    with quiet():
        for op_type, block in blocks.items():  # one pass per op type: the quantizer takes one block per pass
            config = matmul_nbits_quantizer.DefaultWeightOnlyQuantConfig(
                block_size=block, is_symmetric=False, accuracy_level=4, bits=4, op_types_to_quantize=(op_type,),
                quant_axes=(("MatMul", 0), ("Gather", 0)), quant_format=quant_utils.QuantFormat.QOperator)
            quantizer = matmul_nbits_quantizer.MatMulNBitsQuantizer(model, algo_config=config)
            quantizer.process()
            model = quantizer.model.model
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


def _matmul_block(graph: onnx.GraphProto, block: int) -> int:
    """``block``, or the largest of ``INT4_BLOCKS`` not longer than the graph's shortest MatMul weight column."""
    dims = {tensor.name: tensor.dims for tensor in graph.initializer}
    rows = [dims[node.input[1]][-2] for node in graph.node
            if node.op_type == "MatMul" and len(dims.get(node.input[1], ())) >= 2]
    shortest = min(rows, default=block)
    return max((size for size in INT4_BLOCKS if size <= min(block, shortest)), default=INT4_BLOCKS[0])


def compute_op_types(onnx_path: Path) -> list[str]:
    """The ``COMPUTE_OPS`` present in the graph, in that order."""
    present = {node.op_type for node in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    return [op for op in COMPUTE_OPS if op in present]


def fuse_transformer(src: Path, dst: Path) -> Path | None:
    """onnxruntime's BERT fusions; head count and hidden size are read from the graph (0 = detect)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with quiet():
        optimized = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0)
        if not any(optimized.get_fused_operator_statistics().values()):
            return None
        optimized.save_model_to_file(str(dst))
    return dst


def max_abs_diff(reference: Path, candidate: Path) -> float:
    ref, cand = runtime.session(reference), runtime.session(candidate)
    inputs = runtime.synthetic_feed(ref, batch=runtime.fixed_batch(ref) or 2, seq_len=32)
    if "attention_mask" in inputs and len(inputs["attention_mask"]) > 1:
        inputs["attention_mask"][1, 20:] = 0  # real padding in the second row
    expected, actual = ref.run(None, inputs)[0], cand.run(None, runtime.feed(cand, inputs))[0]
    if expected.shape != actual.shape:
        raise ModelLoadError("fused graph changed the output shape", "report this model")
    return float(np.abs(expected - actual).max())



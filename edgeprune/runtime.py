"""onnxruntime sessions and input feeds, built the same way by every stage that runs a model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _state

from edgeprune.errors import BadArgumentError, ModelLoadError

BAD_MODEL = (_state.InvalidProtobuf, _state.InvalidGraph, _state.InvalidArgument, _state.NotImplemented,
             _state.NoSuchFile, _state.Fail)
"""What onnxruntime raises for a file that is not a usable model (corrupt bytes, an invalid graph, an operator it
lacks); anything else it raises is not the input's fault and is left to surface as an internal error."""

TOKEN_ID_RANGE = (1000, 2000)
"""Synthetic token ids are drawn here: ordinary word pieces in any BERT-size vocabulary."""


def session(path: Path | str, threads: int = 1, allow_spinning: bool = True) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads and graph optimizations on.

    Spinning threads are faster on an idle machine but inflate latency when another
    session or process competes for the cores; benchmarks that interleave can turn it off.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"ONNX model '{path}' does not exist", "pass the path of a .onnx file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    try:
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except BAD_MODEL as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelLoadError(f"'{path}' is not a loadable ONNX model ({type(exc).__name__}: {first})",
                             "re-export the model (edgeprune export)") from None
    if not sess.get_inputs():
        raise ModelLoadError(f"'{path}' has no inputs, so there is nothing to run or time",
                             "export the model with its inputs (edgeprune export)")
    return sess


def feed(sess: ort.InferenceSession, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The subset of ``arrays`` the graph takes: token inputs as int64 (as exported transformers expect), float
    inputs (pixels) as float32; a decoder's key/value cache, when not given, empty (the arrays are a prefill)."""
    specs = sess.get_inputs()
    names = [i.name for i in specs]
    missing = [n for n in names if n not in arrays and n not in DERIVED and not n.startswith(CACHE_PREFIX)]
    if missing:
        raise ModelLoadError(f"the model needs inputs {missing} that were not provided",
                             "use a model exported by edgeprune or optimum")
    out = {n: np.asarray(arrays[n], dtype=np.float32 if np.issubdtype(np.asarray(arrays[n]).dtype, np.floating)
                         else np.int64) for n in names if n in arrays}
    if "token_type_ids" in names and "token_type_ids" not in out:
        out["token_type_ids"] = np.zeros_like(out["input_ids"])
    if "position_ids" in names and "position_ids" not in out:
        out["position_ids"] = position_ids(out["attention_mask"])
    batch = len(out["input_ids"]) if "input_ids" in out else 1
    for spec in specs:
        if spec.name.startswith(CACHE_PREFIX) and spec.name not in out:
            out[spec.name] = np.zeros([batch if axis == 0 else dim if isinstance(dim, int) else 0
                                       for axis, dim in enumerate(spec.shape)], dtype=np.float32)
    return out


def takes_cache(onnx_path: Path | str) -> bool:
    """Whether the model is a decoder exported with its key/value cache (its graph takes ``past_key_values.*``).
    A missing or unreadable file is not one; opening its session reports what is wrong with it."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except (OSError, DecodeError):
        return False
    return any(i.name.startswith(CACHE_PREFIX) for i in graph.input)


def step_inputs(ids: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """A decoder step's inputs: the new token ``ids`` (batch 1) at the end of a context of ``length`` tokens."""
    return {"input_ids": ids, "attention_mask": np.ones((1, length), dtype=np.int64),
            "position_ids": np.arange(length - ids.shape[1], length, dtype=np.int64)[None]}


def next_cache(output_names: list[str], result: list[np.ndarray]) -> dict[str, np.ndarray]:
    """A step's ``present.*`` outputs as the next step's ``past_key_values.*`` inputs."""
    return {name.replace("present", CACHE_PREFIX, 1): value for name, value in zip(output_names, result)
            if name.startswith("present")}


DERIVED = ("token_type_ids", "position_ids")
"""Inputs an exported transformer may take that follow from the others when not given."""
CACHE_PREFIX = "past_key_values"
"""A decoder exported with its key/value cache takes the cache in inputs named so (optimum's naming)."""


def position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """Positions of the real tokens (0, 1, …) as a decoder's generate() numbers them; padding gets 1."""
    positions = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask == 0, 1, positions).astype(np.int64)


def synthetic_feed(sess: ort.InferenceSession, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the requested shape for timing: random token ids, full attention, zeros elsewhere (a decoder's
    key/value cache empty: a prefill of ``seq_len`` tokens).

    Token-model inputs are recognized by name; any float input (an image, say) gets
    standard-normal values of its static shape with the batch axis set to ``batch``. A request
    that contradicts an axis the model fixes (a batch of 2 for a model exported with batch 1) is
    refused with the axis named, instead of failing inside onnxruntime.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in sess.get_inputs():
        wanted = [batch, *([seq_len] * (len(spec.shape) - 1))]
        shape = []
        for axis, (dim, want) in enumerate(zip(spec.shape, wanted)):
            if isinstance(dim, int) and dim != want and (axis == 0 or "float" not in spec.type):
                what = "batch" if axis == 0 else "sequence length"
                raise BadArgumentError(f"input '{spec.name}' has a fixed {what} of {dim}; {want} cannot run",
                                       f"pass --{'batch' if axis == 0 else 'seq-len'} {dim}")
            shape.append(dim if isinstance(dim, int) else _symbolic(dim, want))
        if "float" in spec.type:
            arrays[spec.name] = rng.standard_normal(shape).astype(np.float32)
        elif spec.name == "input_ids":
            arrays[spec.name] = rng.integers(*TOKEN_ID_RANGE, size=shape, dtype=np.int64)
        elif "mask" in spec.name:
            arrays[spec.name] = np.ones(shape, dtype=np.int64)
        elif spec.name == "position_ids":
            arrays[spec.name] = np.tile(np.arange(shape[-1], dtype=np.int64), (shape[0], 1))
        else:
            arrays[spec.name] = np.zeros(shape, dtype=np.int64)
    return arrays


def _symbolic(dim: object, want: int) -> int:
    """A symbolic axis's size: a decoder's cache axis (``past_sequence_length``) is empty — the timed run is a
    prefill — and its mask axis (``past_sequence_length + sequence_length``) is the sequence."""
    name = str(dim)
    return 0 if "past" in name and "+" not in name else want


def fixed_batch(sess: ort.InferenceSession) -> int | None:
    """The batch size the model's first input fixes, or None when its batch axis is dynamic."""
    shape = sess.get_inputs()[0].shape
    return shape[0] if shape and isinstance(shape[0], int) else None


def check_seq_len(onnx_path: Path | str, seq_len: int) -> None:
    """Refuse a sequence length beyond the positions the model has (``max_position_embeddings`` in the config.json
    beside it; RoBERTa-style models spend two on padding), instead of an index error deep in onnxruntime."""
    config_path = Path(onnx_path).parent / "config.json"
    if not config_path.is_file():
        return
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # not ours to judge here; loading the model reports a broken config
    limit = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if not isinstance(limit, int):
        return
    if config.get("model_type") in ("roberta", "xlm-roberta"):
        limit -= 2
    if seq_len > limit:
        raise BadArgumentError(f"--seq-len {seq_len} is beyond the model's {limit} positions",
                               f"pass --seq-len {limit} or less")

"""onnxruntime sessions and input feeds, built the same way by every stage that runs a model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeprune.errors import ModelLoadError

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
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelLoadError(f"'{path}' is not a loadable ONNX model ({first})",
                             "re-export the model (edgeprune export)") from None


def feed(sess: ort.InferenceSession, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The subset of ``arrays`` the graph takes: token inputs as int64 (as exported transformers expect), float
    inputs (pixels) as float32."""
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in arrays and n not in DERIVED]
    if missing:
        raise ModelLoadError(f"the model needs inputs {missing} that were not provided",
                             "use a model exported by edgeprune or optimum")
    out = {n: np.asarray(arrays[n], dtype=np.float32 if np.issubdtype(np.asarray(arrays[n]).dtype, np.floating)
                         else np.int64) for n in names if n in arrays}
    if "token_type_ids" in names and "token_type_ids" not in out:
        out["token_type_ids"] = np.zeros_like(out["input_ids"])
    if "position_ids" in names and "position_ids" not in out:
        out["position_ids"] = position_ids(out["attention_mask"])
    return out


DERIVED = ("token_type_ids", "position_ids")
"""Inputs an exported transformer may take that follow from the others when not given."""


def position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """Positions of the real tokens (0, 1, …) as a decoder's generate() numbers them; padding gets 1."""
    positions = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask == 0, 1, positions).astype(np.int64)


def synthetic_feed(sess: ort.InferenceSession, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the requested shape for timing: random token ids, full attention, zeros elsewhere.

    Token-model inputs are recognized by name; any float input (an image, say) gets
    standard-normal values of its static shape with the batch axis set to ``batch``.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in sess.get_inputs():
        if "float" in spec.type:
            shape = [batch if i == 0 else (d if isinstance(d, int) else seq_len) for i, d in enumerate(spec.shape)]
            arrays[spec.name] = rng.standard_normal(shape).astype(np.float32)
        elif spec.name == "input_ids":
            arrays[spec.name] = rng.integers(*TOKEN_ID_RANGE, size=(batch, seq_len), dtype=np.int64)
        elif "mask" in spec.name:
            arrays[spec.name] = np.ones((batch, seq_len), dtype=np.int64)
        elif spec.name == "position_ids":
            arrays[spec.name] = np.tile(np.arange(seq_len, dtype=np.int64), (batch, 1))
        else:
            arrays[spec.name] = np.zeros((batch, seq_len), dtype=np.int64)
    return arrays

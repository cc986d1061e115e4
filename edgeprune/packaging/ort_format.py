"""ONNX → ORT format, the reduced-operator build configuration, and the fixed-shape variant.

The ORT format is what onnxruntime's mobile packages and minimal builds load: the graph already
optimized, no protobuf parser needed. onnxruntime's own converter
(``onnxruntime.tools.convert_onnx_models_to_ort``) does the conversion and writes
``required_operators_and_types.config``, the list of operators and types an app needs, from
which a minimal onnxruntime is built (``build.py --include_ops_by_config``). Every ``.ort`` is
run beside its ``.onnx`` on the same inputs before it is shipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgeprune import runtime
from edgeprune.errors import ExportError
from edgeprune.files import model_files

CONFIG_NAME = "required_operators_and_types.config"
LEVEL_VARIABLE = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"
"""How onnxruntime's converter is told the optimization level (it has no argument for it)."""
RELATIVE_TOLERANCE = 1e-4
"""An ``.ort`` must give its ``.onnx``'s outputs within this share of the largest |output| (at least 1)."""


@dataclass
class OrtModel:
    onnx_path: Path
    ort_path: Path
    max_abs_diff: float
    """Largest |ORT − ONNX| output difference on the same inputs."""
    inputs: dict[str, list[int | str]]
    """The ``.ort``'s input shapes (a symbolic axis by its name)."""


def convert(source: Path, out_dir: Path, level: str, arm: bool) -> Path:
    """Convert every ``.onnx`` in the folder ``source`` to an ``.ort`` in ``out_dir`` at optimization ``level``
    (``basic``, ``extended``, ``all``) for an ARM (``arm``) or x86 device; return the reduced-operator config that
    covers them all.

    For ARM the converter leaves out the x86-only NCHWc layout and lets QDQ stay int8.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from edgeprune.quiet import quiet

    with quiet(), _environment(LEVEL_VARIABLE, level):
        convert_onnx_models_to_ort(source, output_dir=out_dir, optimization_styles=[OptimizationStyle.Fixed],
                                   target_platform="arm" if arm else "amd64", enable_type_reduction=True)
    suffix = "" if level == "all" else f".{level}"
    config = out_dir / CONFIG_NAME.replace(".config", f"{suffix}.config")
    if not config.is_file():
        raise ExportError(f"onnxruntime's converter wrote no {config.name}", "report this with the model")
    return config.rename(out_dir / CONFIG_NAME)


def ort_path(onnx_path: Path, out_dir: Path, level: str) -> Path:
    """Where the converter puts the ``.ort`` of ``onnx_path`` (it marks levels other than ``all`` in the name)."""
    suffix = "" if level == "all" else f".{level}"
    return out_dir / f"{onnx_path.stem}{suffix}.ort"


def verified(onnx_path: Path, ort_file: Path, seq_len: int) -> OrtModel:
    """Run ``ort_file`` and ``onnx_path`` on the same inputs; refuse an ``.ort`` whose outputs differ."""
    ort_session = runtime.session(ort_file)
    expected, got = _outputs(runtime.session(onnx_path), seq_len), _outputs(ort_session, seq_len)
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0 for a, b in zip(expected, got))
    scale = max(1.0, *(float(np.max(np.abs(a))) for a in expected if a.size))
    if diff > RELATIVE_TOLERANCE * scale:
        raise ExportError(f"'{ort_file.name}' differs from '{onnx_path.name}' by {diff:.3g} (largest output "
                          f"{scale:.3g})", "report this with the model; ship the .onnx meanwhile")
    inputs = {i.name: [d if isinstance(d, int) else str(d) for d in i.shape] for i in ort_session.get_inputs()}
    return OrtModel(onnx_path=onnx_path, ort_path=ort_file, max_abs_diff=diff, inputs=inputs)


def fixed_shape_copy(onnx_path: Path, out_path: Path, batch: int, seq_len: int) -> dict[str, list[int]]:
    """Save ``onnx_path`` with every dynamic input axis fixed (``make_dim_param_fixed``): the batch axis to
    ``batch``, any other to ``seq_len``; return the fixed input shapes. NNAPI needs fixed sizes and Core ML
    runs faster with them, at the price of one shape per model file."""
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    model = onnx.load(str(onnx_path))
    for value in model.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_param"):
                make_dim_param_fixed(model.graph, dim.dim_param, batch if axis == 0 else seq_len)
            elif not dim.HasField("dim_value"):
                dim.dim_value = batch if axis == 0 else seq_len
    fix_output_shapes(model)
    onnx.save(model, str(out_path))
    return {value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim] for value in model.graph.input}


def _outputs(sess: ort.InferenceSession, seq_len: int) -> list[np.ndarray]:
    return sess.run(None, runtime.synthetic_feed(sess, 1, seq_len))


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def copy_model(onnx_path: Path, out_path: Path) -> None:
    """Copy an ONNX model with its external-data files, renamed to ``out_path`` (the references inside stay
    valid: external data is named relative to the model's folder and copied under the same names)."""
    shutil.copy2(onnx_path, out_path)
    for data in model_files(onnx_path)[1:]:
        shutil.copy2(data, out_path.parent / data.name)

"""A bundle an app can ship: an ONNX model → ORT format for a device profile, with what the app needs beside it.

``package(onnx_path, profile, out_dir)`` writes, atomically:

- ``model.ort`` — onnxruntime's mobile format at the optimization level the profile's runtime uses (the CPU
  provider: ``all``, without the x86-only NCHWc layout on ARM), checked to give the ``.onnx``'s outputs;
- ``required_operators_and_types.config`` — for a minimal onnxruntime build with only these operators;
- a usability report for each execution provider the profile lists (NNAPI, Core ML, XNNPACK): nodes,
  partitions, what falls back to the CPU and why, and a verdict (``usability``);
- ``model.fixed.ort`` when fixing the input shapes would make a provider worth using;
- the tokenizer / preprocessing files, ``bundle.json`` (hashes, profile, verdicts, version) and a README
  written from the real file names (``readme``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeprune import runtime
from edgeprune.devices import DeviceProfile, load_profile
from edgeprune.errors import BadArgumentError
from edgeprune.files import atomic_write_json, atomic_write_text, model_files, sha256_file, size_mb, staged_dir
from edgeprune.models.loading import TOKENIZER_FILES, copy_model_files
from edgeprune.packaging.ort_format import convert, copy_model, fixed_shape_copy, ort_path, verified
from edgeprune.packaging.readme import bundle_readme
from edgeprune.packaging.usability import EpUsability, analyze, fixing_shapes_helps
from edgeprune.provenance import versions

OPTIMIZATION_LEVEL = "all"
"""The level of the ORT file: the profile's runtime is onnxruntime's CPU provider, which runs every fusion."""
CARRIED_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", *TOKENIZER_FILES)
"""Files beside the model an app needs to prepare its inputs; nothing else in the folder is carried (not the pruning
plan or sentence-transformers files, which only a Python pipeline reads)."""


@dataclass(frozen=True)
class PackageOptions:
    """How to package: the input shape of the fixed-shape variant and of the ORT-vs-ONNX check, and when to make
    the variant (``auto``: when a listed provider's verdict improves with fixed shapes)."""

    batch: int = 1
    seq_len: int = 128
    fixed_shapes: Literal["auto", "yes", "no"] = "auto"

    def __post_init__(self) -> None:
        if self.batch < 1 or self.seq_len < 1:
            raise BadArgumentError(f"batch {self.batch} and seq_len {self.seq_len} must be at least 1",
                                   "pass positive --batch / --seq-len")
        if self.fixed_shapes not in ("auto", "yes", "no"):
            raise BadArgumentError(f"fixed_shapes '{self.fixed_shapes}' is not auto, yes or no",
                                   "pass --fixed-shapes auto, yes or no")


@dataclass
class Bundle:
    out_dir: Path
    manifest: dict[str, Any]
    usability: list[EpUsability] = field(repr=False)

    @property
    def size_mb(self) -> float:
        return self.manifest["bundle_size_mb"]


def package(onnx_path: Path | str, profile: str | DeviceProfile, out_dir: Path | str,
            options: PackageOptions | None = None, budget_verdicts: list[dict[str, Any]] | None = None) -> Bundle:
    """Package ``onnx_path`` for ``profile`` into ``out_dir`` (replaced only when everything succeeded).

    ``budget_verdicts`` (from ``check`` or ``optimize``) are recorded in the manifest as they are.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    options = options or PackageOptions()
    device = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    runtime.session(onnx_path)  # a missing or broken model is refused here, in one line
    decoder = runtime.takes_cache(onnx_path)
    with staged_dir(out_dir, inputs=model_files(onnx_path)) as tmp:
        work = tmp / ".work"
        work.mkdir()
        copy_model(onnx_path, work / "model.onnx")
        report = analyze(work / "model.onnx", list(device.runtime.mobile_execution_providers))
        fixed = _fixed_variant(report, options, decoder, work)
        config = convert(work, tmp, OPTIMIZATION_LEVEL, arm=device.cpu.arch == "arm64")
        models = [verified(work / name, ort_path(work / name, tmp, OPTIMIZATION_LEVEL), options.seq_len)
                  for name in ("model.onnx", *(("model.fixed.onnx",) if fixed["made"] else ()))]
        if fixed["made"]:
            fixed["usability"] = [ep.to_dict() for ep in analyze(work / "model.fixed.onnx", [ep.provider
                                                                                           for ep in report])]
        shutil.rmtree(work)
        carried = copy_model_files(onnx_path.parent, tmp, CARRIED_FILES, folders=())
        manifest = _manifest(onnx_path, device, models, config, report, fixed, carried, budget_verdicts, tmp)
        atomic_write_json(tmp / "bundle.json", manifest)
        atomic_write_text(tmp / "README.md", bundle_readme(manifest))
    return Bundle(out_dir=out_dir, manifest=manifest, usability=report)


def _fixed_variant(report: list[EpUsability], options: PackageOptions, decoder: bool, work: Path) -> dict[str, Any]:
    """Make ``model.fixed.onnx`` when asked or when it would help; say why either way."""
    helps = fixing_shapes_helps(report)
    if decoder:
        return {"made": False, "why": "not made: a decoder's key/value cache grows every step, so its shapes "
                                      "cannot be fixed"}
    if options.fixed_shapes == "no" or (options.fixed_shapes == "auto" and not helps):
        why = ("not made (--fixed-shapes no)" if options.fixed_shapes == "no" else
               "not made: fixing the input shapes would not change any listed provider's verdict")
        return {"made": False, "why": why}
    shapes = fixed_shape_copy(work / "model.onnx", work / "model.fixed.onnx", options.batch, options.seq_len)
    improved = [ep.provider for ep in report if ep.with_fixed_shapes is not None
                and ep.with_fixed_shapes.verdict != ep.verdict]
    why = (f"model.fixed.ort takes only inputs of shape {shapes}; it makes {', '.join(improved)} worth trying"
           if improved else f"model.fixed.ort takes only inputs of shape {shapes} (made on request)")
    return {"made": True, "why": why, "inputs": shapes}


def _manifest(onnx_path: Path, device: DeviceProfile, models: list[Any], config: Path, report: list[EpUsability],
              fixed: dict[str, Any], carried: list[str], budget_verdicts: list[dict[str, Any]] | None,
              tmp: Path) -> dict[str, Any]:
    entries = []
    for model in models:
        entries.append({
            "file": model.ort_path.name, "sha256": sha256_file(model.ort_path),
            "size_mb": round(size_mb(model.ort_path), 3), "max_abs_diff_vs_onnx": model.max_abs_diff,
            "what": "fixed input shapes" if "fixed" in model.ort_path.name else "dynamic input shapes",
            "inputs": model.inputs})
    files = [p for p in tmp.rglob("*") if p.is_file()]
    return {
        "edgeprune_version": versions()["edgeprune"],
        "source": {"name": onnx_path.parent.name or onnx_path.stem, "path": str(onnx_path.resolve()),
                   "sha256": sha256_file(onnx_path), "size_mb": round(size_mb(onnx_path), 3)},
        "profile": {"name": device.name, "description": device.description, "arch": device.cpu.arch,
                    "threads": device.runtime.threads,
                    "execution_providers": list(device.runtime.mobile_execution_providers)},
        "optimization_level": OPTIMIZATION_LEVEL,
        "models": entries,
        "config": {"file": config.name, "sha256": sha256_file(config), "operators": _operator_count(config)},
        "execution_providers": [ep.to_dict() for ep in report],
        "fixed_shape_variant": fixed,
        "files": carried,
        "budget_verdicts": budget_verdicts,
        "bundle_size_mb": round(sum(p.stat().st_size for p in files) / 1e6, 3),
    }


def _operator_count(config: Path) -> int:
    """How many operators (per domain and opset) the minimal build must include, read by onnxruntime's parser."""
    from onnxruntime.tools.reduced_build_config_parser import parse_config

    required, _ = parse_config(str(config), True)
    return sum(len(ops) for opsets in required.values() for ops in opsets.values())

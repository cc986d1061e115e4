"""PruningPlan: which heads and FFN neurons each layer keeps, and how they were chosen.

A plan is the whole recipe: applying the same plan to the same dense model always gives
the same pruned model, and a pruned checkpoint is rebuilt from config + plan + weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.errors import PlanError
from edgeprune.files import atomic_write_text

PLAN_FILE = "pruning_plan.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LayerPlan:
    """Kept attention-unit (head or key/value group) and FFN neuron indices of one layer (sorted, unique, in the
    dense numbering)."""

    heads: tuple[int, ...]
    neurons: tuple[int, ...]


@dataclass(frozen=True)
class DenseShape:
    """The dense model's per-layer sizes, so a plan can be validated against a model.

    ``num_heads`` counts attention units: heads, or under grouped-query attention key/value
    groups of ``group_size`` query heads each.
    """

    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    group_size: int = 1


@dataclass(frozen=True)
class PruningPlan:
    layers: tuple[LayerPlan, ...]
    dense: DenseShape
    criterion: str = "magnitude"
    target: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    accumulate: str = "sum"
    """How per-batch scores were combined: ``sum`` or ``ema`` (data-driven criteria only)."""
    ema_decay: float = 0.9
    calibration_texts: int = 0
    """How many calibration texts were scored (0 for weight-only criteria)."""
    allocation: str = "uniform"
    recovery: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    """What recovery did after slicing (method, fitted projections, held-aside errors, distillation)."""

    def __post_init__(self) -> None:
        if len(self.layers) != self.dense.num_layers:
            raise PlanError(
                f"plan has {len(self.layers)} layers but the dense model has {self.dense.num_layers}",
                "use a plan made for this model",
            )
        for i, layer in enumerate(self.layers):
            _check_indices(f"layer {i} heads", layer.heads, self.dense.num_heads)
            _check_indices(f"layer {i} neurons", layer.neurons, self.dense.ffn_dim)

    @property
    def kept_heads(self) -> list[int]:
        return [len(layer.heads) for layer in self.layers]

    @property
    def kept_neurons(self) -> list[int]:
        return [len(layer.neurons) for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = [{"heads": list(lp.heads), "neurons": list(lp.neurons)} for lp in self.layers]
        return {"format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        try:
            if data.get("format_version") != FORMAT_VERSION:
                raise PlanError(
                    f"plan format version {data.get('format_version')!r} is not {FORMAT_VERSION}",
                    "re-create the plan with this edgeprune version",
                )
            return cls(
                layers=tuple(
                    LayerPlan(tuple(int(h) for h in lp["heads"]), tuple(int(n) for n in lp["neurons"]))
                    for lp in data["layers"]
                ),
                dense=DenseShape(**data["dense"]),
                criterion=str(data["criterion"]),
                target={str(k): float(v) for k, v in data.get("target", {}).items()},
                seed=int(data.get("seed", 0)),
                accumulate=str(data.get("accumulate", "sum")),
                ema_decay=float(data.get("ema_decay", 0.9)),
                calibration_texts=int(data.get("calibration_texts", 0)),
                allocation=str(data.get("allocation", "uniform")),
                recovery=dict(data.get("recovery", {"method": "none"})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed pruning plan ({type(exc).__name__}: {exc})",
                            "re-create the plan with `edgeprune prune`") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"pruning plan is not valid JSON ({exc})", "re-create the plan") from None
        if not isinstance(data, dict):
            raise PlanError("pruning plan JSON is not an object", "re-create the plan")
        return cls.from_dict(data)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> PruningPlan:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise PlanError(f"cannot read pruning plan '{path}' ({exc.strerror})",
                            "check the path") from None


def _check_indices(what: str, indices: tuple[int, ...], dense_count: int) -> None:
    if not indices:
        raise PlanError(f"{what}: nothing kept", "keep at least one head and one neuron per layer")
    if list(indices) != sorted(set(indices)):
        raise PlanError(f"{what}: indices must be sorted and unique", "fix the plan file")
    if indices[0] < 0 or indices[-1] >= dense_count:
        raise PlanError(f"{what}: index out of range 0..{dense_count - 1}", "use a plan made for this model")

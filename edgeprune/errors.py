"""One exception family for every failure a user can fix.

Each error carries the cause and the fix, so the CLI can print one line and exit 2
instead of a traceback.
"""

from __future__ import annotations


class EdgepruneError(Exception):
    """Base class: ``cause`` says what is wrong, ``fix`` what the user can do about it."""

    def __init__(self, cause: str, fix: str = "") -> None:
        self.cause = cause
        self.fix = fix
        super().__init__(f"{cause} — {fix}" if fix else cause)


class ModelLoadError(EdgepruneError):
    """The model path is missing, unreadable, or not a model edgeprune can read."""


class UnsupportedModelError(EdgepruneError):
    """The architecture has no pruning adapter."""


class PlanError(EdgepruneError):
    """A pruning plan or pruning target is invalid."""


class ExportError(EdgepruneError):
    """ONNX export failed or its outputs disagree with PyTorch."""


class ProfileError(EdgepruneError):
    """A device profile is missing, malformed, or cannot be used for the request."""


class OutputError(EdgepruneError):
    """An output location would overwrite an input or something edgeprune did not write."""


class BadArgumentError(EdgepruneError):
    """An option has a value edgeprune cannot use (unknown name, out of range, contradicting another)."""


class RemoteError(EdgepruneError):
    """A device agent cannot be reached, refuses the request, or cannot measure the model."""


class SweepError(EdgepruneError):
    """A sweep file (SWEEP.yaml) is malformed, or the Ray cluster cannot run its cells."""

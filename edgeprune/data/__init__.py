"""Text that ships with edgeprune, so the default run needs no downloaded data.

``sentences.txt`` and ``calibration.txt`` hold short, varied English sentences written for
this project, with no sentence in both: the first serves as export parity inputs and the
default fidelity set, the second as default calibration text for data-driven importance and
recovery, so fidelity is never measured on the text a model was fitted to. Neither is a
benchmark.
"""

from __future__ import annotations

from importlib.resources import files


def sample_sentences() -> list[str]:
    return _lines("sentences.txt")


def calibration_sentences() -> list[str]:
    return _lines("calibration.txt")


def _lines(name: str) -> list[str]:
    text = files("edgeprune.data").joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]

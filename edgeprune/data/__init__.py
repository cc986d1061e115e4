"""Text that ships with edgeprune, so the default run needs no downloaded data.

``sentences.txt`` holds short, varied English sentences written for this project. They
serve as export parity inputs and as the default fidelity set; they are not a benchmark.
"""

from __future__ import annotations

from importlib.resources import files


def sample_sentences() -> list[str]:
    text = files("edgeprune.data").joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]

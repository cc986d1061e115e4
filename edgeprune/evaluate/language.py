"""Quality of a causal language model: perplexity on held-out text, and greedy agreement with the dense model.

Perplexity is taken over fixed windows so that figures are comparable between models and runs:
the evaluation text is tokenized once, its first ``max_tokens`` tokens are cut into windows of
``window`` tokens starting every ``stride`` tokens, and each window scores only the tokens the
previous one did not: every token once, with at most ``window`` tokens of context (with
stride == window the windows do not overlap and the first token of each cannot be scored).
The same windows feed a PyTorch model or an ONNX decoder, so the quantized file is scored
exactly like the model it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune import runtime
from edgeprune.errors import EdgepruneError
from edgeprune.profiling.generation import generate

Logits = Callable[[np.ndarray], np.ndarray]
"""Token ids (1, n) → next-token logits (1, n, vocabulary)."""

PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colours are",
    "To make a cup of tea, first",
)
"""Prompts for greedy agreement: prose, code, a story and two facts."""


@dataclass(frozen=True)
class Windows:
    """How the evaluation text is cut (tokens)."""

    window: int = 512
    stride: int = 512
    max_tokens: int = 16_384

    def __post_init__(self) -> None:
        if not 0 < self.stride <= self.window or self.max_tokens < 2:
            raise EdgepruneError(f"perplexity windows {self} are inconsistent",
                                 "use 0 < stride <= window and at least 2 tokens")


@dataclass
class Perplexity:
    value: float
    tokens: int
    """Tokens scored."""
    windows: Windows

    def to_dict(self) -> dict[str, Any]:
        return {"perplexity": round(self.value, 4), "tokens": self.tokens, "window": self.windows.window,
                "stride": self.windows.stride}


def load_text(path: Path | str) -> str:
    path = Path(path)
    if not path.is_file():
        raise EdgepruneError(f"evaluation text '{path}' does not exist",
                             "pass a raw text file, e.g. WikiText-2's wiki.test.raw")
    return path.read_text(encoding="utf-8")


def text_ids(tokenizer: Any, text: str, max_tokens: int) -> np.ndarray:
    """The first ``max_tokens`` token ids of ``text`` (no special tokens: the windows are plain running text)."""
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)[:max_tokens]
    if len(ids) < 2:
        raise EdgepruneError("the evaluation text has fewer than 2 tokens", "pass a longer text")
    return ids


def perplexity(logits: Logits, ids: np.ndarray, windows: Windows = Windows()) -> Perplexity:
    """exp of the mean next-token negative log-likelihood of ``ids`` (see the module docstring for the windows)."""
    ids = ids[:windows.max_tokens]
    total, scored, done = 0.0, 0, 0
    for begin in range(0, len(ids) - 1, windows.stride):
        end = min(begin + windows.window, len(ids))
        first = max(done, begin + 1)
        if first >= end:
            continue
        out = logits(ids[None, begin:end])[0, first - 1 - begin:end - 1 - begin].astype(np.float64)
        peak = out.max(axis=-1)
        log_norm = peak + np.log(np.exp(out - peak[:, None]).sum(axis=-1))
        total += float((log_norm - out[np.arange(len(out)), ids[first:end]]).sum())
        scored += end - first
        done = end
    return Perplexity(float(np.exp(total / scored)), scored, windows)


def torch_logits(model: nn.Module) -> Logits:
    @torch.no_grad()
    def run(ids: np.ndarray) -> np.ndarray:
        return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.float().numpy()
    return run


def onnx_logits(onnx_path: Path | str, threads: int = 1) -> Logits:
    """Logits of an ONNX decoder; one exported with its key/value cache runs each window as a prefill."""
    sess = runtime.session(onnx_path, threads=threads)

    def run(ids: np.ndarray) -> np.ndarray:
        return sess.run(None, runtime.feed(sess, {"input_ids": ids, "attention_mask": np.ones_like(ids)}))[0]
    return run


def greedy_torch(model: nn.Module, tokenizer: Any, prompts: tuple[str, ...], new_tokens: int) -> list[np.ndarray]:
    """The ``new_tokens`` tokens PyTorch's greedy ``generate`` chooses after each prompt."""
    result = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            result.append(out[0, ids.shape[1]:].numpy())
    return result


def greedy_onnx(onnx_path: Path | str, tokenizer: Any, prompts: tuple[str, ...], new_tokens: int,
                threads: int = 1) -> list[np.ndarray]:
    """The tokens an ONNX decoder with its key/value cache chooses greedily after each prompt."""
    sess = runtime.session(onnx_path, threads=threads)
    outputs = [o.name for o in sess.get_outputs()]
    return [generate(sess, outputs, np.asarray([tokenizer(p)["input_ids"]], dtype=np.int64),
                     new_tokens - 1).tokens[0] for p in prompts]


@dataclass
class Agreement:
    """How closely greedy generations follow the reference's, token by token."""

    prefix: float
    """Mean share of each generation identical to the reference before the first difference."""
    matched: float
    """Share of positions with the same token."""

    def to_dict(self) -> dict[str, float]:
        return {"prefix": round(self.prefix, 4), "matched": round(self.matched, 4)}


def greedy_agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> Agreement:
    prefixes, matches = [], []
    for ref, cand in zip(reference, candidate, strict=True):
        same = ref[:len(cand)] == cand[:len(ref)]
        differ = np.flatnonzero(~same)
        prefixes.append((differ[0] if len(differ) else len(same)) / len(ref))
        matches.append(same.sum() / len(ref))
    return Agreement(float(np.mean(prefixes)), float(np.mean(matches)))

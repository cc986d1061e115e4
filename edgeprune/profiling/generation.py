"""How a decoder LLM exported with its key/value cache generates on this host: prefill, decode, tokens/s.

A language model's user waits twice: once for the prompt (prefill: every prompt token in one
run, compute-bound) and then per generated token (decode: one token per run against the
growing cache, bound by reading the weights and the cache). One figure cannot describe both,
so this measures both, greedily, on a seeded random prompt, in interleaved rounds judged by
the same stability rules as every other latency here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune import runtime
from edgeprune.profiling import health, measure
from edgeprune.profiling.measure import LatencyStats, StabilityRules

DEFAULT_PROMPT_TOKENS = 128
DEFAULT_NEW_TOKENS = 128
PREFILLS_PER_ROUND = 4


@dataclass
class GenerationStats:
    """Prefill of ``prompt_tokens`` and ``new_tokens`` greedy decode steps after it, per round."""

    prompt_tokens: int
    new_tokens: int
    prefill: LatencyStats
    """ms per prefill of the prompt."""
    decode: LatencyStats
    """ms per generated token (every decode step of every round)."""

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput at the median step time."""
        return 1e3 / self.decode.p50

    @property
    def doubts(self) -> list[str]:
        return [*(f"prefill: {r}" for r in self.prefill.doubts), *(f"decode: {r}" for r in self.decode.doubts)]

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """``samples``: with every timed sample (see ``LatencyStats.to_dict``)."""
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "prefill_ms": self.prefill.to_dict(samples), "decode_ms_per_token": self.decode.to_dict(samples),
                "tokens_per_s": round(self.tokens_per_s, 3)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationStats:
        """The inverse of ``to_dict(samples=True)``."""
        return cls(prompt_tokens=int(data["prompt_tokens"]), new_tokens=int(data["new_tokens"]),
                   prefill=LatencyStats.from_dict(data["prefill_ms"]),
                   decode=LatencyStats.from_dict(data["decode_ms_per_token"]))


def measure_generation(onnx_path: Path, threads: int, *, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
                       new_tokens: int = DEFAULT_NEW_TOKENS, rounds: int = 3, seed: int = 0,
                       rules: StabilityRules | None = None) -> GenerationStats:
    """Time ``rounds`` rounds of ``PREFILLS_PER_ROUND`` prefills of a random ``prompt_tokens`` prompt, the last of
    them followed by ``new_tokens`` greedy decode steps (one short warm-up generation first); the session stays
    open across rounds, as an app's would."""
    rules = rules or measure.RULES
    sess, outputs, prompt = _warmed(onnx_path, threads, prompt_tokens, new_tokens, seed)
    prefill: list[list[float]] = []
    decode: list[list[float]] = []
    windows = []
    for _ in range(rounds):
        start = health.snapshot()
        alone = [generate(sess, outputs, prompt, 0).prefill_ms for _ in range(PREFILLS_PER_ROUND - 1)]
        last = generate(sess, outputs, prompt, new_tokens)
        windows.append(health.sharing(start, health.snapshot()))
        prefill.append([*alone, last.prefill_ms])
        decode.append(last.step_ms)
    sharing = health.merge(windows)
    return GenerationStats(prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                           prefill=measure.judged(prefill, sharing, 0, 0.0, 1, rules),
                           decode=measure.judged(decode, sharing, 0, 0.0, 1, rules))


def _warmed(onnx_path: Path, threads: int, prompt_tokens: int, new_tokens: int,
            seed: int) -> tuple[Any, list[str], np.ndarray]:
    """A session, its output names and a seeded random prompt, after one short warm-up generation."""
    sess = runtime.session(onnx_path, threads=threads)
    prompt = runtime.synthetic_feed(sess, 1, prompt_tokens, seed)["input_ids"]
    outputs = [o.name for o in sess.get_outputs()]
    generate(sess, outputs, prompt, min(new_tokens, 4))
    return sess, outputs, prompt


@dataclass
class Generated:
    """One greedy generation: timings and the tokens it chose."""

    prefill_ms: float
    step_ms: list[float]
    """ms of each decode step."""
    tokens: np.ndarray
    """(batch, 1 + steps): the token chosen after the prefill, then after each step."""


def generate(sess: Any, outputs: list[str], prompt: np.ndarray, new_tokens: int) -> Generated:
    """Greedy generation: a prefill of ``prompt`` then ``new_tokens`` decode steps, each fed the previous ``present``
    cache."""
    ids, past, length = prompt, {}, prompt.shape[1]
    times, chosen = [], []
    for _ in range(new_tokens + 1):
        feed = runtime.feed(sess, {**runtime.step_inputs(ids, length), **past})
        start = measure.clock()
        result = sess.run(None, feed)
        times.append((measure.clock() - start) * 1e3)
        past = runtime.next_cache(outputs, result)
        ids, length = result[0][:, -1].argmax(-1)[:, None].astype(np.int64), length + 1
        chosen.append(ids)
    return Generated(times[0], times[1:], np.concatenate(chosen, axis=1))


def compare_decode(onnx_paths: list[Path], threads: int, *, prompt_tokens: int = 32, new_tokens: int = 32,
                   rounds: int = 3) -> list[LatencyStats]:
    """Decode ms/token of several decoders side by side: each round generates once with every model in turn (one
    session alive at a time), so drift hits all alike; judged by the stability rules like any other comparison."""
    per_model: list[list[list[float]]] = [[] for _ in onnx_paths]
    windows = []
    for _ in range(rounds):
        start = health.snapshot()
        for samples, path in zip(per_model, onnx_paths):
            sess, outputs, prompt = _warmed(path, threads, prompt_tokens, new_tokens, 0)
            samples.append(generate(sess, outputs, prompt, new_tokens).step_ms)
            del sess
        windows.append(health.sharing(start, health.snapshot()))
    sharing = health.merge(windows)
    return [measure.judged(samples, sharing, 0, 0.0, 1, measure.RULES) for samples in per_model]

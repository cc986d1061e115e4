"""Task metrics: how much a compressed model still agrees with the dense one, and with people.

An ``Encoder`` maps texts to one vector each (a pooled sentence embedding, or a
classifier's logits), so the same metrics apply to a PyTorch model and to any ONNX file.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprune import runtime
from edgeprune.data.inputs import model_inputs
from edgeprune.data.text import as_torch
from edgeprune.errors import EdgepruneError
from edgeprune.models.loading import LoadedModel

Encoder = Callable[[list[object]], np.ndarray]
"""Texts or images → one vector each."""
BATCH_SIZE = 32


def pool(output: np.ndarray, attention_mask: np.ndarray | None, pooling: str) -> np.ndarray:
    """Token states (batch, positions, dim) → one vector per input; 2-D outputs (logits) pass through. Without an
    attention mask (images) every position is real."""
    if output.ndim == 2:
        return output
    if pooling == "cls":
        return output[:, 0]
    if attention_mask is None:
        return output.mean(axis=1)
    mask = attention_mask[..., None].astype(output.dtype)
    return (output * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)


def _batched(encode_batch: Callable[[list[object]], np.ndarray]) -> Encoder:
    def encode(items: list[object]) -> np.ndarray:
        return np.concatenate([encode_batch(items[i:i + BATCH_SIZE]) for i in range(0, len(items), BATCH_SIZE)])
    return encode


def torch_encoder(loaded: LoadedModel) -> Encoder:
    @torch.no_grad()
    def encode_batch(items: list[object]) -> np.ndarray:
        arrays = model_inputs(loaded.processor, items)
        output = loaded.model(**as_torch(arrays))[0]
        return pool(output.float().numpy(), arrays.get("attention_mask"), loaded.pooling)
    return _batched(encode_batch)


def onnx_encoder(onnx_path: Path, processor: object, pooling: str, threads: int = 1) -> Encoder:
    sess = runtime.session(onnx_path, threads=threads)

    def encode_batch(items: list[object]) -> np.ndarray:
        arrays = model_inputs(processor, items)
        output = sess.run(None, runtime.feed(sess, arrays))[0]
        return pool(output, arrays.get("attention_mask"), pooling)
    return _batched(encode_batch)


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of inputs whose highest-scoring class is the same in both (rows are logits)."""
    return float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean())


def cosine_fidelity(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean cosine similarity between matching rows: 1.0 means the same directions."""
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    return float((ref * cand).sum(axis=1).mean())


@dataclass
class SentencePairs:
    first: list[str]
    second: list[str]
    gold: np.ndarray


def load_stsb(path: Path) -> SentencePairs:
    """STS Benchmark TSV: genre, file, year, id, score, sentence1, sentence2 (extra trailing columns ignored).

    Quotes are literal text in this format, so the file is split on tabs only.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgepruneError(f"STS-B file '{path}' does not exist", "pass the path of sts-dev.csv")
    first, second, gold = [], [], []
    with open(path, encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                gold.append(float(row[4]))
                first.append(row[5])
                second.append(row[6])
    if not gold:
        raise EdgepruneError(f"'{path}' has no STS-B rows", "pass the STS Benchmark TSV (sts-dev.csv)")
    return SentencePairs(first, second, np.asarray(gold))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their average rank)."""
    return float(np.corrcoef(_ranks(np.asarray(x)), _ranks(np.asarray(y)))[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def stsb_spearman(encoder: Encoder, path: Path) -> float:
    """STS-B Spearman ×100 of the cosine similarity of the two sentences' embeddings."""
    pairs = load_stsb(path)
    a, b = encoder(pairs.first), encoder(pairs.second)
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100.0 * spearman(cos, pairs.gold)


@dataclass
class LabeledTexts:
    texts: list[str]
    labels: np.ndarray


def load_ag_news(path: Path) -> LabeledTexts:
    """AG News CSV: quoted class (1-4), title, description; a text is title and description, labels 0-3."""
    path = Path(path)
    if not path.is_file():
        raise EdgepruneError(f"AG News file '{path}' does not exist", "pass the path of ag_news/test.csv")
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle):
            if len(row) == 3 and row[0].isdigit():
                labels.append(int(row[0]) - 1)
                texts.append(f"{row[1]}. {row[2]}".replace("\\", " "))
    if not texts:
        raise EdgepruneError(f"'{path}' has no AG News rows", "pass the AG News CSV (class, title, description)")
    return LabeledTexts(texts, np.asarray(labels))


@dataclass
class LinearProbe:
    """A softmax classifier on frozen (L2-normalised) sentence embeddings."""

    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: np.ndarray, l2: float = 1e-3, seed: int = 0) -> LinearProbe:
        """Multinomial logistic regression with an L2 penalty, solved by L-BFGS (deterministic under ``seed``)."""
        torch.manual_seed(seed)
        x = torch.from_numpy(_unit(embeddings)).double()
        y = torch.from_numpy(labels).long()
        weight = torch.zeros(x.shape[1], int(labels.max()) + 1, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(int(labels.max()) + 1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            optimizer.zero_grad()
            value = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
            value.backward()
            return value

        optimizer.step(loss)
        return cls(weight.detach().numpy(), bias.detach().numpy())

    def accuracy(self, embeddings: np.ndarray, labels: np.ndarray) -> float:
        """Share of correct predictions ×100."""
        predicted = (_unit(embeddings).astype(np.float64) @ self.weight + self.bias).argmax(axis=1)
        return 100.0 * float((predicted == labels).mean())


def _unit(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)

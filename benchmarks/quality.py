"""Quality vs speed of pruned all-MiniLM-L6-v2: criterion × accumulation × recovery × speedup level.

One run, one table. Speedup levels are int8 latency against dense fp32 at 1 thread, batch 1,
seq 128, measured here: the benchmark first times int8 models pruned uniformly to a grid of
FLOPs fractions and, for each level, keeps the most units that still reach it (every row of a
level has the same shapes, hence the same latency). Quality is measured on the shipped int8
ONNX model: STS-B dev Spearman, cosine fidelity to dense fp32 on the STS-B sentences, and AG
News accuracy of a linear probe trained on dense fp32 embeddings (the same head, nothing
retrained) and refit on the pruned model's embeddings. Calibration text (scoring, recovery,
distillation) is 512 WikiText-2 sentences by default, or 512 AG News texts outside the probe's
train and evaluation splits (``--calibration-source ag-news``): disjoint from both evaluation sets.

    python benchmarks/quality.py [--levels 1.5 2 2.5 3] [--json quality.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprune import evaluate
from edgeprune.exporting import export
from edgeprune.models import adapter_for
from edgeprune.models.loading import LoadedModel, load_model
from edgeprune.profiling import compare_latency
from edgeprune.pruning import Accumulation, apply_plan, make_plan, score
from edgeprune.pruning.calibration import calibration_batches
from edgeprune.pruning.recover import DISTILL_STEPS, distill, least_squares
from edgeprune.quantization import quantize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
KEEP_GRID = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 2 / 3, 0.6, 0.55, 0.5)
COMBOS = (("magnitude", "sum"), ("activation", "sum"), ("activation", "ema"), ("taylor", "sum"),
          ("taylor", "ema"), ("fisher", "sum"), ("fisher", "ema"))
RECOVERIES = ("none", "lstsq", "distill")
EVAL_THREADS = 2


@dataclass
class Row:
    level: float
    speedup: float
    keep_flops: float
    criterion: str
    accumulate: str
    recovery: str
    stsb: float
    cosine: float
    accuracy_same_head: float
    accuracy_refit: float
    prune_seconds: float
    quantized_form: str


def wiki_sentences(path: Path, count: int, seed: int) -> list[str]:
    """Sentences of 6-40 words from WikiText-2 raw text, detokenized, in a seeded random order."""
    sentences = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for sentence in re.split(r"(?<= \.) ", line):
            for raw, clean in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" ,", ","), (" .", "."),
                               (" 's", "'s")):
                sentence = sentence.replace(raw, clean)
            if 6 <= len(sentence.split()) <= 40:
                sentences.append(sentence)
    random.Random(seed).shuffle(sentences)
    return sentences[:count]


class Evaluator:
    """Exports, quantizes and scores candidate models against the dense references."""

    def __init__(self, dense: LoadedModel, work: Path, stsb: evaluate.SentencePairs, ag: evaluate.LabeledTexts,
                 train: np.ndarray, held: np.ndarray) -> None:
        self.dense, self.work, self.stsb, self.ag = dense, work, stsb, ag
        self.train, self.held = train, held
        self.sentences = stsb.first + stsb.second
        reference = evaluate.torch_encoder(dense)
        self.reference = reference(self.sentences)
        dense_train = reference([ag.texts[i] for i in train])
        self.probe = evaluate.LinearProbe.fit(dense_train, ag.labels[train])
        self.dense_accuracy = self.probe.accuracy(reference([ag.texts[i] for i in held]), ag.labels[held])
        self.dense_stsb = self._spearman(self.reference)
        self.count = 0

    def _spearman(self, embeddings: np.ndarray) -> float:
        n = len(self.stsb.first)
        a, b = embeddings[:n], embeddings[n:]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return 100.0 * evaluate.spearman(cos, self.stsb.gold)

    def int8(self, model: LoadedModel) -> tuple[Path, str]:
        self.count += 1
        onnx_path = export(model, self.work / f"m{self.count}").onnx_path
        result = quantize(onnx_path, self.work / f"q{self.count}")
        return result.onnx_path, result.chosen

    def quality(self, onnx_path: Path) -> dict[str, float]:
        encoder = evaluate.onnx_encoder(onnx_path, self.dense.processor, self.dense.pooling, threads=EVAL_THREADS)
        embeddings = encoder(self.sentences)
        train = encoder([self.ag.texts[i] for i in self.train])
        held = encoder([self.ag.texts[i] for i in self.held])
        refit = evaluate.LinearProbe.fit(train, self.ag.labels[self.train])
        return {"stsb": self._spearman(embeddings),
                "cosine": evaluate.cosine_fidelity(self.reference, embeddings),
                "accuracy_same_head": self.probe.accuracy(held, self.ag.labels[self.held]),
                "accuracy_refit": refit.accuracy(held, self.ag.labels[self.held])}


def speed_levels(dense: LoadedModel, evaluator: Evaluator, dense_onnx: Path, dense_int8: Path,
                 levels: list[float]) -> tuple[dict[float, tuple[float, float]], dict[float, float]]:
    """Measure int8 speedup over dense fp32 for each FLOPs fraction; map each level to the largest that reaches it."""
    paths = {1.0: dense_int8}
    for keep in KEEP_GRID:
        plan = make_plan(dense.model, keep_flops=keep)
        pruned = apply_plan(copy.deepcopy(dense.model), adapter_for(dense.model), plan).eval()
        paths[keep] = evaluator.int8(LoadedModel(pruned, dense.processor, dense.path, dense.task, dense.pooling,
                                                 plan))[0]
    stats = compare_latency([dense_onnx, *paths.values()], threads=1, rounds=4, runs=40)
    base = stats[0].p50
    curve = {keep: base / s.p50 for keep, s in zip(paths, stats[1:])}
    chosen = {}
    for level in levels:
        reaching = [keep for keep, speedup in curve.items() if speedup >= level]
        chosen[level] = (max(reaching), curve[max(reaching)]) if reaching else (min(curve), curve[min(curve)])
    return chosen, curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[1.5, 2.0, 2.5, 3.0])
    parser.add_argument("--calibration-texts", type=int, default=512)
    parser.add_argument("--calibration-source", choices=("wikitext", "ag-news"), default="wikitext",
                        help="wikitext: general text; ag-news: unlabeled AG News texts outside the probe's splits")
    parser.add_argument("--distill-steps", type=int, default=DISTILL_STEPS)
    parser.add_argument("--ag-train", type=int, default=2000)
    parser.add_argument("--ag-eval", type=int, default=1000)
    parser.add_argument("--combos", nargs="+", default=[f"{c}:{a}" for c, a in COMBOS],
                        help="criterion:accumulation pairs to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write every row as JSON")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    dense = load_model(None)
    ag = evaluate.load_ag_news(SHARED / "ag_news" / "test.csv")
    order = np.random.default_rng(args.seed).permutation(len(ag.texts))
    train, held = order[:args.ag_train], order[args.ag_train:args.ag_train + args.ag_eval]
    if args.calibration_source == "ag-news":
        texts = [ag.texts[i] for i in order[-args.calibration_texts:]]  # neither probe training nor evaluation
    else:
        texts = wiki_sentences(SHARED / "wikitext2" / "wiki.test.raw", args.calibration_texts, args.seed)
    batches = calibration_batches(dense.processor, texts)
    print(f"calibration: {len(texts)} {args.calibration_source} texts", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        evaluator = Evaluator(dense, work, evaluate.load_stsb(SHARED / "stsb" / "sts-dev.csv"), ag, train, held)
        dense_onnx = export(dense, work / "dense").onnx_path
        dense_int8, form = evaluator.int8(dense)
        levels, curve = speed_levels(dense, evaluator, dense_onnx, dense_int8, args.levels)
        print("int8 speedup over dense fp32 by kept FLOPs fraction (1 thread, seq 128): "
              + ", ".join(f"{k:.3f}→{s:.2f}x" for k, s in curve.items()), flush=True)
        print(f"dense fp32: STS-B {evaluator.dense_stsb:.2f}, AG News accuracy {evaluator.dense_accuracy:.2f} "
              f"(linear probe on {len(train)} texts, evaluated on {len(held)})", flush=True)
        rows = []
        header = (f"{'level':>6}{'speedup':>8}{'keep':>6} {'criterion':<11}{'acc.':<5}{'recovery':<9}{'STS-B':>7}"
                  f"{'ΔSTS':>6}{'cosine':>8}{'acc':>7}{'Δacc':>6}{'refit':>7}{'prune s':>8}")
        print(header + "\n" + "-" * len(header), flush=True)

        def report(row: Row) -> None:
            rows.append(row)
            print(f"{row.level:>5.1f}x{row.speedup:>7.2f}x{row.keep_flops:>6.2f} {row.criterion:<11}"
                  f"{row.accumulate:<5}{row.recovery:<9}{row.stsb:>7.2f}{row.stsb - evaluator.dense_stsb:>6.2f}"
                  f"{row.cosine:>8.4f}{row.accuracy_same_head:>7.2f}"
                  f"{row.accuracy_same_head - evaluator.dense_accuracy:>6.2f}{row.accuracy_refit:>7.2f}"
                  f"{row.prune_seconds:>8.1f}", flush=True)

        for level, (keep, speedup) in levels.items():
            if keep == 1.0:
                report(Row(level, speedup, 1.0, "-", "-", "none", **evaluator.quality(dense_int8), prune_seconds=0.0,
                           quantized_form=form))
        pruned_levels = {level: ks for level, ks in levels.items() if ks[0] < 1.0}
        for criterion, accumulate in (combo.split(":") for combo in args.combos):
            t0 = time.perf_counter()
            accumulation = Accumulation(accumulate)
            scores = score(dense.model, criterion, batches, accumulation, args.seed)
            scoring = time.perf_counter() - t0
            for level, (keep, speedup) in pruned_levels.items():
                t0 = time.perf_counter()
                plan = make_plan(dense.model, keep_flops=keep, criterion=criterion, batches=batches,
                                 accumulation=accumulation, scores=scores)
                model = apply_plan(copy.deepcopy(dense.model), adapter_for(dense.model), plan).eval()
                elapsed = scoring + time.perf_counter() - t0
                for recovery in RECOVERIES:
                    t0 = time.perf_counter()
                    if recovery == "lstsq":
                        least_squares(dense.model, model, adapter_for(model), batches)
                    elif recovery == "distill":
                        model = copy.deepcopy(model)
                        distill(dense.model, model, batches, args.distill_steps, seed=args.seed)
                    elapsed += time.perf_counter() - t0
                    onnx_path, form = evaluator.int8(LoadedModel(model, dense.processor, dense.path, dense.task,
                                                                 dense.pooling, plan))
                    report(Row(level, speedup, keep, criterion, accumulate, recovery, **evaluator.quality(onnx_path),
                               prune_seconds=elapsed, quantized_form=form))
        _targets(rows, evaluator)
    print(f"benchmark wall time: {(time.perf_counter() - started) / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps({"dense_stsb": evaluator.dense_stsb, "dense_accuracy": evaluator.dense_accuracy,
                                         "speed_curve": curve, "rows": [asdict(r) for r in rows]}, indent=1))


def _targets(rows: list[Row], evaluator: Evaluator) -> None:
    """The issue's targets, checked on the rows above (a configuration must meet both quality bounds)."""

    def within(row: Row) -> bool:
        return (row.stsb >= evaluator.dense_stsb - 1.0
                and row.accuracy_same_head >= evaluator.dense_accuracy - 1.0)

    def best(candidates: list[Row]) -> str:
        if not candidates:
            return "no row"
        top = max(candidates, key=lambda r: (within(r), r.stsb))
        return (f"{'MET' if within(top) else 'MISSED'} by {top.criterion}/{top.accumulate}/{top.recovery} at "
                f"{top.speedup:.2f}x: STS-B {top.stsb:.2f}, accuracy {top.accuracy_same_head:.2f}")

    print(f"target ≥2.5x within 1.0 point, no retraining: "
          f"{best([r for r in rows if r.speedup >= 2.5 and r.recovery != 'distill'])}")
    print(f"target ≥3x within 1.0 point, distillation: "
          f"{best([r for r in rows if r.speedup >= 3.0 and r.recovery == 'distill'])}")
    timed = [r for r in rows if r.recovery == "lstsq"]
    if timed:
        slowest = max(timed, key=lambda r: r.prune_seconds)
        print(f"target prune + least squares ≤60 s: slowest {slowest.prune_seconds:.1f} s "
              f"({slowest.criterion}/{slowest.accumulate}) → {'MET' if slowest.prune_seconds <= 60 else 'MISSED'}")


if __name__ == "__main__":
    main()

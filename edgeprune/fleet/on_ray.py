"""The jobs as Ray tasks: builds side by side, at most one measurement per node at a time, dead workers retried.

Every node that takes sweep work declares one unit of the custom resource ``edgeprune_measure``. A measuring task
(``work.measure_cells``, ``work.run_pipeline``) asks for all of it, so two never run on one node at once; a build
(``work.export_model``) asks for a small share of it, so builds run side by side with each other (up to the
node's CPUs) but never beside a measurement, whose host-health check would otherwise find the cores busy and turn
its latency verdicts UNCERTAIN. Builds are submitted first, so they go ahead while no measurement holds the node.

Locally, ``ray.init`` starts a cluster of ``workers`` CPUs with the resource declared. On a cluster, start every
node with it::

    ray start --head --resources='{"edgeprune_measure": 1}'                 # the head
    ray start --address=HEAD:6379 --resources='{"edgeprune_measure": 1}'   # each worker node

and run ``edgeprune sweep SWEEP.yaml --address HEAD:6379`` on a machine of the cluster. The sweep's folder,
models and profile files must be at the same paths on every node (a shared file system): tasks read the models
and write results there. Host-measured cells are measured on whichever node runs them, and predictions are made
on the node that measured their basis.

A worker that dies mid-task (killed, out of memory, node lost) is retried by Ray up to ``MAX_RETRIES`` times; its
cells' ``attempts.jsonl`` says how often they started.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeprune.errors import SweepError
from edgeprune.fleet.jobs import Job, OnDone
from edgeprune.fleet.work import Built, errored, export_model, measure_cells, run_pipeline

MEASURE = "edgeprune_measure"
BUILD_SHARE = 0.01
"""Of a node's measuring slot, per build: builds exclude measurements, not each other."""
MAX_RETRIES = 2
"""Retries of a task whose worker died (3 attempts in all); an exception inside a cell is never retried."""
POLL_S = 0.5


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


@contextlib.contextmanager
def cluster(address: str | None, workers: int | None) -> Iterator[str]:
    """Connected to Ray (a local cluster when ``address`` is None, or the one already initialized in this
    process); yields a description of it. A cluster started here is shut down on the way out."""
    import ray

    started = not ray.is_initialized()
    if started:
        settings: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR,
                                    "include_dashboard": False}
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if address is None:  # on loopback: a local cluster serves this machine only
                ray.init(num_cpus=workers or os.cpu_count() or 1, resources={MEASURE: 1},
                         _node_ip_address="127.0.0.1", **settings)
            else:
                ray.init(address=address, **settings)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SweepError(f"cannot connect to the Ray cluster at '{address}' ({str(exc).splitlines()[0]})",
                             "check --address (HEAD:6379 of a running `ray start --head`)") from None
        if threading.current_thread() is threading.main_thread():
            # Ray's driver replaces them with its own, which exits at once: give SIGTERM and Ctrl-C back to the
            # caller (the CLI unwinds, cancels the pending tasks and keeps the finished cells)
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    try:
        resources = ray.cluster_resources()
        nodes = int(resources.get(MEASURE, 0))
        if nodes < 1:
            raise SweepError(f"the Ray cluster declares no '{MEASURE}' resource, so no node may measure",
                             f"start each node with ray start --resources='{{\"{MEASURE}\": 1}}'")
        where = ("the Ray cluster this process is connected to" if not started
                 else "a local Ray cluster" if address is None else f"the Ray cluster at {address}")
        yield (f"{where}: {int(resources.get('CPU', 0))} CPUs for builds, {nodes} node(s) measuring, one "
               "measurement at a time per node")
    finally:
        if started:
            ray.shutdown()


def run_on_ray(jobs: list[Job], out: Path, on_done: OnDone, crash: tuple[str, ...] = ()) -> None:
    """Submit every job, then hand each job's results to ``on_done`` as it finishes. On the way out (done, an
    error or an interruption) tasks still pending are cancelled; finished cells are already in the cache."""
    import ray

    def task(function: Any, share: float) -> Any:
        return ray.remote(function).options(num_cpus=1, resources={MEASURE: share}, max_retries=MAX_RETRIES,
                                            retry_exceptions=False)

    build, measure, pipeline = (task(export_model, BUILD_SHARE), task(measure_cells, 1.0),
                                task(run_pipeline, 1.0))
    builds = {i: build.remote(*job.export) for i, job in enumerate(jobs) if job.export is not None}
    pending = {}
    for i, job in enumerate(jobs):
        if job.pipeline:
            ref = pipeline.remote(job.cells[0], str(out), crash)
        else:
            ref = measure.remote(job.cells, builds.get(i, Built(job.onnx)), str(out), crash)
        pending[ref] = job
    try:
        while pending:
            done = _wait(ray, list(pending))
            for ref in done:
                job = pending.pop(ref)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    why = str(exc).strip().splitlines()[0][:300]
                    results = [errored(cell, {"error": f"its Ray task failed ({why}); a worker that died is "
                                                       f"retried {MAX_RETRIES} times", "error_kind": "internal"})
                               for cell in job.cells]
                on_done(results)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def _wait(ray: Any, refs: list[Any]) -> list[Any]:
    """The finished ones of ``refs`` (waiting up to ``POLL_S``). Ray checks for signals while it waits and wraps what
    a handler raises in a SystemError; an interruption (Ctrl-C, the CLI's SIGTERM) is raised as itself."""
    try:
        return ray.wait(refs, num_returns=1, timeout=POLL_S)[0]
    except SystemError as exc:
        if exc.__cause__ is not None and not isinstance(exc.__cause__, Exception):
            raise exc.__cause__ from None
        raise

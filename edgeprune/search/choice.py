"""Which search candidate ships, and why every other one does not: pure functions of the candidates' figures.

A candidate ships when it meets the latency (and memory) budget and loses no more quality than
allowed; of those, the best quality wins, preferring the ones inside the timing margin, since the
final check re-measures. When none qualifies, the fastest built candidate is kept so the run can
still report what it found. Latency-table points are measured for the table only and never ship.
"""

from __future__ import annotations

from dataclasses import dataclass

TIMING_MARGIN = 0.05
"""Candidates aim this fraction under the budget, because the final check re-measures: the p90 of one pruned
all-MiniLM-L6-v2 int8 model (one thread, 99 runs, beside its dense and fp32 forms) measured 5.67-6.05 ms in four
calls in one process, and 5.85 vs 6.21 ms in the search vs the final check."""


@dataclass
class Candidate:
    keep_flops: float
    precision: str
    latency_ms: float
    """At the budget's percentile: measured on this host, predicted on another device."""
    fidelity: float
    stsb: float | None = None
    meets_budget: bool = False
    pareto: bool = False
    verdict: str = ""
    """``chosen``, or why this candidate was not."""
    table: bool = False
    """A latency-table point (uniform pruning, no recovery, dynamic int8): measured, never shipped."""
    low_ms: float | None = None
    """Predicted band (other devices only)."""
    high_ms: float | None = None
    setting: str = ""
    """What was pruned: a table point's per-layer counts, or the latency target a candidate was allocated for."""
    memory_mb: float | None = None
    """Peak MiB over the process baseline (measured in a fresh process here), when a memory budget is set."""


@dataclass(frozen=True)
class Bounds:
    """What a shipped candidate must meet."""

    budget_ms: float
    memory_mb: float | None = None
    """Peak MiB over the process baseline, when memory is budgeted too."""
    max_quality_drop: float | None = None
    """The most quality a candidate may lose: STS-B points when ``dense_stsb`` is known, else 1 − cosine fidelity."""
    dense_stsb: float | None = None

    @property
    def aim_ms(self) -> float:
        """Where candidates aim: ``TIMING_MARGIN`` under the budget."""
        return self.budget_ms * (1 - TIMING_MARGIN)

    def meets(self, latency_ms: float, memory_mb: float | None = None) -> bool:
        """Within the latency budget, and the memory budget when both it and a peak are known."""
        return latency_ms <= self.budget_ms and (memory_mb is None or self.memory_mb is None
                                                 or memory_mb <= self.memory_mb)

    def quality_drop(self, c: Candidate) -> float:
        return self.dense_stsb - c.stsb if self.dense_stsb is not None else 1.0 - c.fidelity

    def acceptable(self, c: Candidate) -> bool:
        """Meets the budget and loses no more quality than allowed."""
        return c.meets_budget and (self.max_quality_drop is None or self.quality_drop(c) <= self.max_quality_drop)


@dataclass(frozen=True)
class Choice:
    chosen: Candidate | None
    """The best-quality acceptable candidate, or None when no built candidate is acceptable."""
    kept: Candidate
    """``chosen``, or the fastest built candidate when there is none."""
    verdicts: list[str]
    """Per candidate, in their order: ``chosen``, or why not."""


def quality(c: Candidate) -> float:
    """STS-B when it was measured, else cosine fidelity to the dense model."""
    return c.stsb if c.stsb is not None else c.fidelity


def choose(candidates: list[Candidate], bounds: Bounds) -> Choice:
    """The candidate to ship among ``candidates`` (at least one of them built, not a table point), under ``bounds``.

    Of the acceptable built candidates, those inside the timing margin (at most ``bounds.aim_ms``)
    come first — the others only when none is inside it; the best quality wins, then the least pruning.
    """
    meeting = [c for c in candidates if not c.table and bounds.acceptable(c)]
    safe = [c for c in meeting if c.latency_ms <= bounds.aim_ms] or meeting
    chosen = max(safe, key=lambda c: (quality(c), c.keep_flops), default=None)
    kept = chosen or min((c for c in candidates if not c.table), key=lambda c: c.latency_ms)
    return Choice(chosen, kept, [_verdict(c, chosen, safe, bounds) for c in candidates])


def _verdict(c: Candidate, chosen: Candidate | None, safe: list[Candidate], bounds: Bounds) -> str:
    if c is chosen:
        return "chosen"
    if c.table:
        return "latency-table point: no recovery, not shipped"
    if not c.meets_budget:
        if c.latency_ms > bounds.budget_ms:
            return f"misses the budget: {c.latency_ms:.3f} ms > {bounds.budget_ms:g} ms"
        return f"misses the memory budget: {c.memory_mb:.1f} MiB > {bounds.memory_mb:g} MiB"
    if not bounds.acceptable(c):
        return f"loses {bounds.quality_drop(c):.4g} quality, more than {bounds.max_quality_drop:g}"
    if not any(c is s for s in safe):
        return f"meets the budget by less than the {TIMING_MARGIN:.0%} timing margin"
    return "meets the budget with lower quality than the chosen one"


def mark_pareto(candidates: list[Candidate]) -> None:
    """A candidate is on the front when no other is both at least as fast and at least as faithful (and better
    in one)."""
    for c in candidates:
        c.pareto = not any(o is not c and o.latency_ms <= c.latency_ms and o.fidelity >= c.fidelity
                           and (o.latency_ms < c.latency_ms or o.fidelity > c.fidelity) for o in candidates)


def advice(choice: Choice, candidates: list[Candidate], bounds: Bounds, floor_ms: float, dense_ms: float) -> str:
    """One sentence for the user: what was chosen, or what would have to change for something to be.

    ``floor_ms`` is the latency table's floor (what no pruning removes), ``dense_ms`` the dense fp32 latency.
    """
    chosen, best, budget_ms, memory_mb = choice.chosen, choice.kept, bounds.budget_ms, bounds.memory_mb
    if chosen is not None:
        return (f"keep {chosen.keep_flops:.3f} of the encoder MACs, {chosen.precision}: {chosen.latency_ms:.3f} ms "
                f"<= {budget_ms:g} ms ({dense_ms / chosen.latency_ms:.2f}x faster than dense fp32)")
    meeting = [(c, verdict) for c, verdict in zip(candidates, choice.verdicts) if not c.table and c.meets_budget]
    if meeting:
        return ("candidates meet the latency budget but lose more quality than allowed: "
                + "; ".join(f"keep {c.keep_flops:.3f}: {verdict}" for c, verdict in meeting)
                + ". Needed: a larger budget or a larger allowed quality drop.")
    if best.latency_ms <= budget_ms and best.memory_mb is not None:
        return (f"memory budget {memory_mb:g} MiB is out of reach: the fastest candidate (keep "
                f"{best.keep_flops:.3f}, {best.precision}) meets {budget_ms:g} ms but peaks at {best.memory_mb:.1f} "
                f"MiB, {best.memory_mb / memory_mb:.2f}x the budget. Needed: a memory budget of at least "
                f"{best.memory_mb:.1f} MiB or a smaller model.")
    return (f"budget {budget_ms:g} ms is out of reach: the fastest candidate (keep {best.keep_flops:.3f}, "
            f"{best.precision}) measures {best.latency_ms:.3f} ms, {best.latency_ms / budget_ms:.2f}x the budget "
            f"(the latency table's floor: {floor_ms:.3f} ms). Needed: a budget of at least "
            f"{best.latency_ms:.3f} ms, more threads, or a smaller model than pruning this one can reach.")

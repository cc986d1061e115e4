"""CNN recovery beyond retraining-free: distillation on unlabeled images, data-free image synthesis from BatchNorm
statistics, and latency-aware channel allocation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgeprune.data.synthesize import SynthesisOptions, bn_statistics_gap, synthesize_images
from edgeprune.errors import PlanError
from edgeprune.models.conv import channel_graph
from edgeprune.pruning.channel_latency import ChannelLatencyTable, LatencyAllocation, allocate_for_latency
from edgeprune.pruning.channels import channel_scores, prune_channels, rounded_count
from edgeprune.pruning.conv_distill import DistillOptions, augment, held_aside_fit, split_held_aside
from edgeprune.search.channel_table import measure_channel_table


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 48, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(48)
        self.conv3, self.bn3 = nn.Conv2d(48, 64, 1, bias=False), nn.BatchNorm2d(64)
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.classifier(x.mean((2, 3)))


def smooth_images(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    """Images with spatial structure (upsampled noise, shifted and scaled): the statistics BatchNorm learns from."""
    coarse = torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 1.5 + 0.5


@pytest.fixture()
def trained() -> SmallCNN:
    """A CNN whose BatchNorm statistics come from ``smooth_images`` (train-mode passes), so they describe a data
    distribution that random noise does not match."""
    torch.manual_seed(0)
    model = SmallCNN()
    model.train()
    with torch.no_grad():
        for seed in range(20):
            model(smooth_images(32, seed=100 + seed))
        model.classifier.weight.mul_(20.0)  # confident logits, as a trained classifier has
    return model.eval()


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_distillation_lowers_the_held_aside_kl_and_is_bit_deterministic(trained, ema) -> None:
    """From the sliced weights (start=none: the least-squares start fits this small CNN almost exactly, leaving
    distillation nothing to show), distillation on the training images lowers the KL on images it never saw,
    with the guard reading the last step's weights or their moving average."""
    data = smooth_images(48, seed=1)
    _, held = split_held_aside(data)
    options = DistillOptions(steps=60, minutes=None, batch_size=8, lr=3e-3, check_every=20, start="none", seed=3,
                             ema=ema)
    runs = [prune_channels(trained, data[:1], keep_ratio=0.5, multiple=1, batches=list(data.split(8)),
                           recovery="distill", distill=options) for _ in range(2)]
    (pruned, plan), (again, _) = runs
    report = plan.recovery
    assert report["method"] == "distill" and report["steps"] == 60 and report["stopped_by"] == "steps"
    assert report["held_aside"] == len(held) == 6 and report["start"] == {"method": "none"}
    raw, _ = prune_channels(trained, data[:1], keep_ratio=0.5, multiple=1)
    assert report["held_kl_before"] == pytest.approx(held_aside_fit(trained, raw, held)[0], abs=1e-5)
    assert held_aside_fit(trained, pruned, held)[0] < 0.5 * held_aside_fit(trained, raw, held)[0]
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), again.state_dict().values()))


def test_the_default_start_depends_on_where_the_images_come_from() -> None:
    assert DistillOptions().starting(synthesized=False) == "bn"
    assert DistillOptions().starting(synthesized=True) == "none"
    assert DistillOptions(start="lstsq").starting(synthesized=True) == "lstsq"
    with pytest.raises(PlanError, match="unknown distillation start"):
        DistillOptions(start="bogus")


def test_a_worse_held_aside_check_is_rolled_back(trained) -> None:
    """A learning rate that wrecks the model: every check is worse, so every one is undone and the model that
    comes back is the one distillation started from."""
    data = smooth_images(32, seed=2)
    options = DistillOptions(steps=20, minutes=None, batch_size=8, lr=50.0, check_every=5)
    _, plan = prune_channels(trained, data[:1], keep_ratio=0.5, multiple=1, batches=list(data.split(8)),
                             recovery="distill", distill=options)
    assert plan.recovery["rollbacks"] == 4
    assert plan.recovery["held_kl_after"] == plan.recovery["held_kl_before"]


def test_distillation_refuses_too_few_images(trained) -> None:
    data = smooth_images(8)
    with pytest.raises(PlanError, match="at least 16 images"):
        prune_channels(trained, data[:1], keep_ratio=0.5, batches=[data], recovery="distill")


def test_augmentation_is_seeded_and_keeps_the_batch_shape() -> None:
    data = smooth_images(8, size=32)
    first = augment(data, torch.Generator().manual_seed(5), resolution=24, mix=1.0)
    assert first.shape == (8, 3, 24, 24)
    assert torch.equal(first, augment(data, torch.Generator().manual_seed(5), resolution=24, mix=1.0))
    assert not torch.equal(first, augment(data, torch.Generator().manual_seed(6), resolution=24, mix=1.0))


def test_synthesis_drives_batch_statistics_towards_the_running_statistics(trained) -> None:
    options = SynthesisOptions(count=16, size=16, batch_size=16, steps=60, lr=0.1, jitter=2, seed=0)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    result = synthesize_images(trained, options)
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())  # the model is not trained
    assert result.images.shape == (16, 3, 16, 16) and result.bn_layers == 3
    noise = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert bn_statistics_gap(trained, result.images) < 0.5 * bn_statistics_gap(trained, noise)
    first, last = result.bn_loss_first_last
    assert last < 0.5 * first
    assert torch.equal(result.images, synthesize_images(trained, options).images)


def test_synthesis_needs_batchnorm() -> None:
    from edgeprune.errors import EdgepruneError

    with pytest.raises(EdgepruneError, match="BatchNorm"):
        synthesize_images(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), SynthesisOptions(count=2, steps=1))


def _table(graph, slopes: list[float], fixed: float = 1.0) -> ChannelLatencyTable:
    """A table where each space costs ``slope`` ms per channel, measured at full, half and a quarter."""
    dense = fixed + sum(slope * len(s.units) for s, slope in zip(graph.spaces, slopes))
    spaces = {}
    for space, slope in zip(graph.spaces, slopes):
        size = len(space.units)
        spaces[space.name] = tuple((c, dense - slope * (size - c)) for c in sorted({size // 4, size // 2, size}))
    return ChannelLatencyTable(dense, spaces)


UNFLOORED = LatencyAllocation(min_share=0.0)


@settings(max_examples=40, deadline=None)
@given(slopes=st.lists(st.floats(0.001, 0.2), min_size=3, max_size=3), budget_share=st.floats(0.3, 1.0),
       multiple=st.sampled_from([1, 4, 8]), min_share=st.sampled_from([0.0, 0.25, 0.5]))
def test_latency_allocation_never_exceeds_the_tables_budget(slopes, budget_share, multiple, min_share) -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    graph = channel_graph(model, smooth_images(1))
    table = _table(graph, slopes)
    scores = channel_scores(model, graph, "magnitude")
    rule = LatencyAllocation(multiple, comparable=False, min_share=min_share)
    least = {s.name: rounded_count(min_share * len(s.units), len(s.units), multiple) for s in graph.spaces}
    floor = table.predict(least)
    budget = floor + budget_share * (table.dense_ms - floor)
    keep = allocate_for_latency(graph, scores, table, budget, rule)
    counts = {s.name: int(keep[list(s.units)].sum()) for s in graph.spaces}
    assert table.predict(counts) <= budget + 1e-9
    assert all(c % multiple == 0 or c == len(s.units) for s, c in zip(graph.spaces, counts.values()))
    assert all(counts[name] >= least[name] for name in counts)
    more = allocate_for_latency(graph, scores, table, budget + 0.05 * table.dense_ms, rule)
    assert int(more.sum()) >= int(keep.sum())


def _conv2_costs_ten_times_more():
    """SmallCNN, its graph, and a table where conv2's channels cost 0.1 ms each and every other space's 0.01 ms."""
    model = SmallCNN().eval()
    graph = channel_graph(model, smooth_images(1))
    return model, graph, _table(graph, [0.1 if s.name == "conv2" else 0.01 for s in graph.spaces])


def test_latency_allocation_keeps_every_spaces_floor() -> None:
    """Importance per ms would empty the space whose channels cost 10x more; the floor keeps its best half."""
    model, graph, table = _conv2_costs_ten_times_more()
    names = [s.name for s in graph.spaces]
    scores = channel_scores(model, graph, "magnitude")
    conv2 = torch.tensor(graph.spaces[names.index("conv2")].units)
    budget = table.predict({s.name: len(s.units) // 2 for s in graph.spaces}) + 0.005  # every space near its floor
    unfloored = allocate_for_latency(graph, scores, table, budget, UNFLOORED)
    assert int(unfloored[conv2].sum()) < len(conv2) // 2
    keep = allocate_for_latency(graph, scores, table, budget, LatencyAllocation(min_share=0.5))
    best_half = conv2[torch.argsort(-scores[conv2], stable=True)[:len(conv2) // 2]]
    assert bool(keep[best_half].all()) and int(keep[conv2].sum()) == len(conv2) // 2
    assert table.predict({s.name: int(keep[list(s.units)].sum()) for s in graph.spaces}) <= budget


def test_latency_allocation_cuts_where_a_channel_costs_most() -> None:
    """Equal importance everywhere: the space whose channels cost 10x more ms is the one cut."""
    _, graph, table = _conv2_costs_ten_times_more()
    names = [s.name for s in graph.spaces]
    keep = allocate_for_latency(graph, torch.ones(graph.num_units), table, table.dense_ms - 1.95, UNFLOORED)
    kept = {s.name: int(keep[list(s.units)].sum()) for s in graph.spaces}
    assert kept["conv2"] == 28 and all(kept[n] == len(s.units) for n, s in zip(names, graph.spaces) if n != "conv2")
    with pytest.raises(PlanError, match="raise the latency budget"):
        allocate_for_latency(graph, torch.ones(graph.num_units), table, 0.5, UNFLOORED)


def test_scores_that_do_not_compare_across_spaces_cut_every_space_alike() -> None:
    """Weight norms cannot say which layer to cut: ranked per ms they would empty the costly space; instead every
    space keeps the same share (to rounding), its highest-scoring units, the largest share within the budget."""
    torch.manual_seed(0)
    model, graph, table = _conv2_costs_ten_times_more()
    scores = channel_scores(model, graph, "magnitude")
    budget = table.dense_ms - 0.4 * (table.dense_ms - 1.0)
    keep = allocate_for_latency(graph, scores, table, budget, LatencyAllocation(comparable=False, min_share=0.0))
    shares = [int(keep[list(s.units)].sum()) / len(s.units) for s in graph.spaces]
    assert max(shares) - min(shares) <= 1 / min(len(s.units) for s in graph.spaces) + 1e-9
    assert table.predict({s.name: int(keep[list(s.units)].sum()) for s in graph.spaces}) <= budget
    for space in graph.spaces:
        units = torch.tensor(space.units)
        kept = int(keep[units].sum())
        assert bool(keep[units[torch.argsort(-scores[units], stable=True)[:kept]]].all())
    wider = allocate_for_latency(graph, scores, table, budget + 0.03, LatencyAllocation(comparable=False, min_share=0))
    assert int(wider.sum()) > int(keep.sum())


def test_an_allocation_timed_whole_is_re_aimed_until_it_uses_its_budget() -> None:
    """A model 25% slower than the table adds up to is aimed lower until it fits; one 30% faster is aimed higher
    and keeps more units than the table alone would, still within the budget."""
    from edgeprune.pruning.channel_latency import CLOSE_ENOUGH, allocate_measured

    torch.manual_seed(0)
    model = SmallCNN().eval()
    graph = channel_graph(model, smooth_images(1))
    table = _table(graph, [0.05, 0.05, 0.05])
    scores = channel_scores(model, graph, "magnitude")
    counts = lambda keep: {s.name: int(keep[list(s.units)].sum()) for s in graph.spaces}  # noqa: E731
    slower = lambda keep: 1.0 + 1.25 * (table.predict(counts(keep)) - 1.0)  # noqa: E731
    faster = lambda keep: 0.7 * table.predict(counts(keep))  # noqa: E731
    budget = 0.6 * table.dense_ms
    rule = LatencyAllocation(comparable=False, min_share=0.0)
    table_only = allocate_for_latency(graph, scores, table, budget, rule)

    keep, attempts = allocate_measured(graph, scores, table, budget, slower, rule)
    assert attempts[0].measured_ms > budget >= slower(keep) and len(attempts) >= 2
    assert attempts[1].aim_ms == pytest.approx(budget * budget / attempts[0].measured_ms)
    assert int(keep.sum()) < int(table_only.sum())

    keep, attempts = allocate_measured(graph, scores, table, budget, faster, rule)
    assert attempts[0].measured_ms < CLOSE_ENOUGH * budget and attempts[1].aim_ms > budget
    assert faster(keep) <= budget and int(keep.sum()) > int(table_only.sum())
    assert int(keep.sum()) == max(a.kept_units for a in attempts if a.measured_ms <= budget)

    never, tried = allocate_measured(graph, scores, table, budget, lambda keep: 10 * table.dense_ms, rule,
                                     attempts=3)
    assert 1 <= len(tried) <= 3 and all(a.measured_ms > budget for a in tried)  # the last one; the check says so


def test_the_measured_channel_table_has_every_space_and_prunes_to_its_budget(tmp_path) -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    example = smooth_images(2, size=32)
    graph = channel_graph(model, example[:1])
    table = measure_channel_table(model, example, graph, tmp_path / "table", multiple=8, runs=5, rounds=1)
    assert set(table.spaces) == {s.name for s in graph.spaces}
    assert all(len(points) == 3 and max(points)[1] == table.dense_ms for points in table.spaces.values())
    assert all(c % 8 == 0 for points in table.spaces.values() for c, _ in points)
    half = {name: points[1][0] for name, points in table.spaces.items()}
    assert table.predict({name: max(points)[0] for name, points in table.spaces.items()}) == table.dense_ms
    budget = table.predict(half)  # a budget the table itself says is reachable
    keep = allocate_for_latency(graph, channel_scores(model, graph, "magnitude"), table, budget,
                                LatencyAllocation(8, comparable=False))
    pruned, plan = prune_channels(model, example[:1], keep=keep)
    assert plan.target == {"keep_units": int(keep.sum())}
    assert table.predict({s.name: len(k) for s, k in zip(graph.spaces, plan.spaces.values())}) <= budget
    assert pruned(example).shape == (2, 10)

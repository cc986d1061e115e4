"""Decoder LLM pruning on tiny random Llama/Qwen2 configs: criteria find planted dead units, FLAP's bias compensation
is exact where it should be, global allocation keeps key/value groups uniform, distillation recovers, and perplexity
and greedy agreement read the same from PyTorch and ONNX."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.errors import PlanError
from edgeprune.evaluate import language
from edgeprune.models import adapter_for
from edgeprune.models.loading import LoadedModel, load_model, load_pruned, save_pruned
from edgeprune.models.plan import LayerPlan, PruningPlan
from edgeprune.models.slicing import dense_shape
from edgeprune.options import CRITERIA, PruneOptions
from edgeprune.pruning import make_plan, prune, score
from edgeprune.pruning.calibration import calibration_batches

CALIBRATION = ["A man is playing a guitar on the street.", "The cat sleeps on the warm sofa.",
               "Stocks fell sharply after the bank raised rates.", "Two dogs run through the snow.",
               "Please restart the router before calling us.", "The orchestra played Beethoven.",
               "Our flight was delayed by fog.", "A child draws a red house."]
HELD_ASIDE = ["The river flooded the old mill last spring.", "She sold her bicycle to a neighbour.",
              "Rain is expected over the weekend.", "He forgot the keys in the car."]


def _batches(loaded: LoadedModel, texts: list[str] = CALIBRATION, size: int = 4) -> list[dict[str, torch.Tensor]]:
    return calibration_batches(loaded.processor, texts, batch_size=size)


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits[batch["attention_mask"].bool()]


def test_every_criterion_ranks_a_planted_dead_neuron_and_kv_group_last(tiny_decoder_dir: Path) -> None:
    loaded = load_model(tiny_decoder_dir)
    first, second = adapter_for(loaded.model).layers(loaded.model)
    with torch.no_grad():
        for block in first.ffn_in:
            block.linear.weight[5] = 0.0
        first.ffn_out.weight[:, 5] = 0.0
        width = second.unit_width
        second.attn_out.weight[:, width:2 * width] = 0.0  # KV group 1 of layer 1 writes nothing
    for criterion in CRITERIA:
        scores = score(loaded.model, criterion, _batches(loaded))
        neurons, groups = scores[0].neurons, scores[1].heads
        assert neurons[5] < torch.cat([neurons[:5], neurons[6:]]).min(), criterion
        assert groups[1] < groups[0], criterion


def _constant_units(tmp: Path, tiny_decoder_dir: Path) -> LoadedModel:
    """A Llama with biases whose layer-0 neuron 3 and layer-1 KV group 1 output constants: their input rows are zero
    and their biases are not, so the neuron's activation and the group's values are the same for every token."""
    from transformers import LlamaForCausalLM

    loaded = load_model(tiny_decoder_dir)
    config = copy.deepcopy(loaded.model.config)
    config.attention_bias = config.mlp_bias = True
    torch.manual_seed(1)
    model = LlamaForCausalLM(config).eval()
    first, second = adapter_for(model).layers(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.1)
        mlp = model.model.layers[0].mlp
        for linear, value in ((mlp.gate_proj, 1.5), (mlp.up_proj, -0.7)):
            linear.weight[3] = 0.0
            linear.bias[3] = value
        values = model.model.layers[1].self_attn.v_proj
        values.weight[second.head_dim:2 * second.head_dim] = 0.0
    model.save_pretrained(tmp)
    loaded.processor.save_pretrained(tmp)
    return load_model(tmp)


def test_bias_compensation_exactly_restores_removed_constant_channels(tmp_path: Path, tiny_decoder_dir: Path) -> None:
    dense = _constant_units(tmp_path / "dense", tiny_decoder_dir)
    shape = dense_shape(dense.model, adapter_for(dense.model))
    every_neuron = tuple(range(shape.ffn_dim))
    plan = PruningPlan(layers=(LayerPlan(heads=(0, 1), neurons=tuple(n for n in every_neuron if n != 3)),
                               LayerPlan(heads=(0,), neurons=every_neuron)), dense=shape)
    batches = _batches(dense)
    expected = _logits(dense.model, batches[0])
    compensated, recorded = prune(dense.model, plan=plan, batches=batches,
                                  options=PruneOptions(criterion="magnitude", recover="bias"))
    uncompensated, _ = prune(dense.model, plan=plan, options=PruneOptions(criterion="magnitude", recover="none"))
    assert recorded.recovery == {"method": "bias", "compensated_projections": 2}
    torch.testing.assert_close(_logits(compensated, batches[0]), expected, atol=1e-5, rtol=1e-5)
    assert (_logits(uncompensated, batches[0]) - expected).abs().max() > 1e-2


def test_bias_compensation_gives_a_bias_free_llama_biases_that_reload(tmp_path: Path, tiny_decoder_dir: Path) -> None:
    dense = load_model(tiny_decoder_dir)
    assert dense.model.model.layers[0].mlp.down_proj.bias is None
    pruned = prune(dense.model, heads_ratio=0.5, ffn_ratio=0.5, batches=_batches(dense),
                   options=PruneOptions(criterion="fluctuation", recover="bias"))
    model, plan = pruned
    assert model.config.mlp_bias and model.model.layers[0].mlp.down_proj.bias.abs().sum() > 0
    assert dense.model.model.layers[0].mlp.down_proj.bias is None  # the input model is untouched
    batch = _batches(dense, HELD_ASIDE)[0]
    reloaded = load_pruned(save_pruned(LoadedModel(model, dense.processor, dense.path, dense.task, dense.pooling,
                                                   plan), tmp_path / "pruned"))
    torch.testing.assert_close(_logits(reloaded.model, batch), _logits(model, batch), atol=1e-5, rtol=1e-5)


def test_bias_compensation_refuses_a_family_without_a_bias_slot() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64)).eval()
    batch = {"input_ids": torch.randint(0, 64, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    with pytest.raises(PlanError, match="nowhere to write") as info:
        prune(model, ffn_ratio=0.5, batches=[batch, batch], options=PruneOptions(criterion="magnitude",
                                                                                  recover="bias"))
    assert "--recover lstsq" in info.value.fix


def test_global_allocation_keeps_key_value_groups_uniform_within_the_budget(tiny_decoder_dir: Path) -> None:
    loaded = load_model(tiny_decoder_dir)
    layers = adapter_for(loaded.model).layers(loaded.model)
    head_macs, neuron_macs = layers[0].unit_macs(128)
    for criterion in ("fluctuation", "fisher"):
        plan = make_plan(loaded.model, keep_flops=0.6, criterion=criterion, batches=_batches(loaded),
                         allocation="global")
        assert plan.kept_heads == [1, 1]  # 60% of 2 groups, the same in every layer
        spent = sum(h * head_macs + n * neuron_macs for h, n in zip(plan.kept_heads, plan.kept_neurons))
        assert spent <= 0.6 * len(layers) * (2 * head_macs + 64 * neuron_macs)
        assert min(plan.kept_neurons) >= 6  # the per-layer minimum (10%)


def _kl(dense: torch.nn.Module, pruned: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    teacher, student = _logits(dense, batch).log_softmax(-1), _logits(pruned, batch).log_softmax(-1)
    return float(torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean"))


def test_distillation_lowers_held_aside_token_kl_and_is_deterministic(tiny_decoder_dir: Path) -> None:
    dense = load_model(tiny_decoder_dir)
    batches, held = _batches(dense, size=2), _batches(dense, HELD_ASIDE)[0]
    options = dict(criterion="magnitude", distill_steps=40)
    refit, _ = prune(dense.model, heads_ratio=0.5, ffn_ratio=0.5, batches=batches,
                     options=PruneOptions(recover="lstsq", **options))
    distilled, plan = prune(dense.model, heads_ratio=0.5, ffn_ratio=0.5, batches=batches,
                            options=PruneOptions(recover="distill", **options))
    again, _ = prune(dense.model, heads_ratio=0.5, ffn_ratio=0.5, batches=batches,
                     options=PruneOptions(recover="distill", **options))
    first, last = plan.recovery["distill_loss_first_last"]
    assert last < first
    assert _kl(dense.model, distilled, held) < _kl(dense.model, refit, held)
    for (name, a), b in zip(distilled.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_perplexity_windows_score_every_token_once() -> None:
    ids = np.arange(50) % 7

    def uniform(window: np.ndarray) -> np.ndarray:
        return np.zeros((*window.shape, 7), dtype=np.float32)

    # Overlapping windows score every token but the first; disjoint ones cannot score the first of each window.
    for windows, scored in ((language.Windows(16, 5, 50), 49), (language.Windows(64, 64, 50), 49),
                            (language.Windows(10, 10, 50), 45)):
        result = language.perplexity(uniform, ids, windows)
        assert result.tokens == scored and result.value == pytest.approx(7.0)
    with pytest.raises(language.EdgepruneError, match="inconsistent"):
        language.Windows(8, 16)


def test_perplexity_and_greedy_tokens_read_the_same_from_pytorch_and_onnx(tiny_decoder_dir: Path,
                                                                          tiny_decoder_onnx: Path) -> None:
    loaded = load_model(tiny_decoder_dir)
    ids = language.text_ids(loaded.processor, " ".join(CALIBRATION + HELD_ASIDE), 60)
    windows = language.Windows(window=24, stride=12, max_tokens=60)
    torch_ppl = language.perplexity(language.torch_logits(loaded.model), ids, windows)
    onnx_ppl = language.perplexity(language.onnx_logits(tiny_decoder_onnx), ids, windows)
    assert torch_ppl.tokens == len(ids) - 1 and onnx_ppl.value == pytest.approx(torch_ppl.value, rel=1e-4)
    reference = language.greedy_torch(loaded.model, loaded.processor, language.PROMPTS[:2], 6)
    candidate = language.greedy_onnx(tiny_decoder_onnx, loaded.processor, language.PROMPTS[:2], 6)
    assert language.greedy_agreement(reference, candidate) == language.Agreement(1.0, 1.0)
    assert language.greedy_agreement([np.array([1, 2, 3, 4])], [np.array([1, 2, 9, 4])]) == \
        language.Agreement(0.5, 0.75)

"""Shared fixtures: tiny BERTs built from a config (fast, exact), and the real packaged MiniLM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def calibration_texts() -> list[str]:
    """Sixteen everyday sentences for calibration batches in tests (the first eight are enough for scoring)."""
    return ["A man is playing a guitar on the street.", "The cat sleeps on the warm windowsill.",
            "Stock markets fell sharply after the announcement.", "Two dogs are running through the snow.",
            "The vaccine trial enrolled thirty thousand volunteers.", "Please restart the router.",
            "The orchestra played a symphony by Beethoven.", "Our flight was delayed because of fog.",
            "Heavy rain flooded the lower streets overnight.", "She finished the marathon in record time.",
            "The committee postponed its decision until spring.", "A child is drawing a red house.",
            "The new phone has a larger battery.", "Farmers expect a poor harvest this year.",
            "He repaired the bicycle with borrowed tools.", "The museum reopened after the renovation."]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from edgeprune.models.loading import default_model_path

    return default_model_path()


def _tiny_bert(tmp: Path, minilm: Path, classifier: bool) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                        intermediate_size=96, max_position_embeddings=128, num_labels=3)
    model = (BertForSequenceClassification if classifier else BertModel)(config).eval()
    # Biases start at zero; give them values so pruning and recovery see real ones.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.bias.normal_(0, 0.02)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(tmp)
    return tmp


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir, classifier=False)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("tiny-cls"), minilm_dir, classifier=True)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    from edgeprune.exporting import export

    return export(tiny_bert_dir, tmp_path_factory.mktemp("tiny-onnx") / "onnx").onnx_path


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A tiny Llama checkpoint (GQA: 4 query heads over 2 key/value heads, 64 positions) with a WordPiece tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-decoder")
    LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
                     ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir, model_input_names=["input_ids", "attention_mask"]).save_pretrained(
        folder)
    return folder


@pytest.fixture(scope="session")
def tiny_decoder_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_decoder_dir: Path) -> Path:
    """``tiny_decoder_dir`` exported with its KV cache."""
    from edgeprune.exporting import export

    return export(tiny_decoder_dir, tmp_path_factory.mktemp("tiny-decoder-onnx") / "onnx").onnx_path


@pytest.fixture(scope="session")
def rates_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One XDG cache for the tests that predict other devices: this host's rates are measured once (~45 s), not
    once per test, and never into the user's own cache."""
    return tmp_path_factory.mktemp("xdg-cache")

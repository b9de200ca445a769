"""Tiny LLaMA builder: loadable HF dir, sensible tokenizer, determinism, pretraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goracs_ray.data.prompts import ALPACA_TEMPLATE
from goracs_ray.models.tiny import build_tiny_llm


def test_tiny_dir_loads_with_auto_classes(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tok)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    ids = tok("Heat (1995)")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Heat (1995)"


def test_answers_and_template_tokenize_compactly(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in ("Yes", "No", " Yes", " No"):
        assert len(tok.encode(text, add_special_tokens=False)) == 1, text
    assert tok.encode("Yes", add_special_tokens=False) != tok.encode("No", add_special_tokens=False)
    for word in (" Instruction", " Response", " Input", " instruction"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
    template = ALPACA_TEMPLATE.format(instruction="", input="")
    n_words = len(template.split())
    assert len(tok.encode(template, add_special_tokens=False)) <= 2 * n_words


def test_same_seed_same_weights_and_pretraining_lowers_loss(tmp_path, tiny_texts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"vocab_size": 400, "hidden_size": 32, "num_layers": 1, "num_heads": 2}
    a = build_tiny_llm(tiny_texts, tmp_path / "a", seed=3, **kw)
    b = build_tiny_llm(tiny_texts, tmp_path / "b", seed=3, **kw)
    c = build_tiny_llm(tiny_texts, tmp_path / "c", seed=3, pretrain_steps=30, **kw)
    ma, mb, mc = (AutoModelForCausalLM.from_pretrained(p) for p in (a, b, c))
    for pa_, pb_ in zip(ma.parameters(), mb.parameters()):
        np.testing.assert_array_equal(pa_.detach().numpy(), pb_.detach().numpy())
    tok = AutoTokenizer.from_pretrained(a)
    batch = tok(tiny_texts[:4], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss_a = ma(**batch, labels=labels).loss.item()
        loss_c = mc(**batch, labels=labels).loss.item()
    assert loss_c < loss_a - 0.5


def test_bad_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="`texts`"):
        build_tiny_llm([], tmp_path / "x")
    with pytest.raises(ValueError, match="`hidden_size`"):
        build_tiny_llm(["a b"], tmp_path / "x", hidden_size=30, num_heads=4)
    assert not (tmp_path / "x").exists()


def test_answers_stay_single_tokens_on_a_large_corpus_without_them():
    """SeqRec text never contains the CTR answers; a big corpus must not crowd them out."""
    from goracs_ray.models.tiny import _train_tokenizer

    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzNY"))
    words = ["".join(rng.choice(letters, 4)) for _ in range(400)]
    texts = [" ".join(rng.choice(words, 40)) for _ in range(20_000)]
    tokenizer = _train_tokenizer(texts, 1024)
    for text in ("Yes", "No", " Yes", " No"):
        assert len(tokenizer.encode(text, add_special_tokens=False)) == 1, text

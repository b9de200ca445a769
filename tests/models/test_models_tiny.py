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


def _prepared_catalog(root, n_items=40, n_train=120):
    """A samples dir as `goracs prepare` writes it: train.parquet + items.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from goracs_ray.data.schema import ITEM_SCHEMA
    from goracs_ray.models.synthetic import synthetic_samples, synthetic_titles

    train = synthetic_samples(n_train, split="train", seed=0, n_items=n_items)
    pq.write_table(train, root / "train.parquet")
    titles = synthetic_titles(n_items, seed=0)
    items = pa.table(
        {
            "item_id": [str(i) for i in range(n_items)],
            "title": titles,
            "description": [f"{t}, Drama Comedy" if i % 2 else None for i, t in enumerate(titles)],
        },
        schema=ITEM_SCHEMA,
    )
    pq.write_table(items, root / "items.parquet")
    return train, items


def test_catalog_model_is_pretrained_on_item_text_only(tmp_path):
    """The base model knows the catalog, never the users: no training prompt, history or answer
    is in its pretraining corpus, which is recorded in the model dir with its size."""
    import json

    from goracs_ray.data.prompts import format_prompt
    from goracs_ray.models.tiny import CORPUS_FILE, RECORD_FILE, build_catalog_model

    train, items = _prepared_catalog(tmp_path)
    out = build_catalog_model(
        tmp_path, tmp_path / "m", vocab_size=400, hidden_size=32, num_layers=1, num_heads=2,
        pretrain_steps=400,
    )  # fmt: skip
    corpus = (out / CORPUS_FILE).read_text().splitlines()
    titles = items.column("title").to_pylist()
    described = items.column("description").to_pylist()
    assert corpus == [d or t for d, t in zip(described, titles)]  # one document per item
    text = "\n".join(corpus)
    for row in train.to_pylist():
        assert format_prompt(row["instruction"], row["input"]) not in text
        assert row["input"] not in text
        assert row["output"] not in text
        assert row["instruction"] not in text
    # No interaction sequence: histories and answers are quoted titles; the corpus has none.
    assert '"' not in text
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["documents"] == len(titles)
    assert record["tokens"] > len(titles)
    assert 0 < record["steps"] <= 400
    assert record["stopped"] in ("plateau", "max_steps")
    losses = [h["corpus_loss"] for h in record["history"]]
    assert record["best_corpus_loss"] == min(losses) < losses[0]


def test_catalog_model_needs_the_catalog(tmp_path):
    from goracs_ray.models.tiny import build_catalog_model

    with pytest.raises(FileNotFoundError, match="items.parquet.*goracs prepare"):
        build_catalog_model(tmp_path, tmp_path / "m")
    assert not (tmp_path / "m").exists()

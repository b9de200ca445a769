"""tokenize_samples: right padding, prompt masking, left truncation keeps the answer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from goracs_ray.models.text import tokenize_samples


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_padding_and_prompt_mask(tok):
    prompts = ["### Instruction:\nshort\n### Response:\n", "### Response:\n"]
    outputs = ['"Heat (1995)"', "Yes"]
    b = tokenize_samples(tok, prompts, outputs, max_length=64)
    ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
    assert ids.dtype == torch.int64
    assert ids.shape == mask.shape == labels.shape
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        p_ids = tok.encode(p, add_special_tokens=False)
        o_ids = tok.encode(o, add_special_tokens=False) + [tok.eos_token_id]
        n = 1 + len(p_ids) + len(o_ids)
        assert ids[i, :n].tolist() == [tok.bos_token_id, *p_ids, *o_ids]
        assert mask[i].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        assert (ids[i, n:] == tok.pad_token_id).all()
        assert labels[i, : 1 + len(p_ids)].eq(-100).all()
        assert labels[i, 1 + len(p_ids) : n].tolist() == o_ids
        assert labels[i, n:].eq(-100).all()


def test_loss_on_all_keeps_prompt_labels(tok):
    b = tokenize_samples(tok, ["Heat Jedi"], ["Yes"], max_length=32, loss_on="all")
    assert b["labels"][0, 0] == -100
    assert b["labels"][0, 1:].tolist() == b["input_ids"][0, 1:].tolist()


def test_truncation_drops_oldest_prompt_tokens(tok):
    prompt = " ".join(f"Heat{i}" for i in range(40)) + " end:\n"
    b = tokenize_samples(tok, [prompt], ['"Toy Story (1995)"'], max_length=24)
    ids = b["input_ids"][0]
    full_p = tok.encode(prompt, add_special_tokens=False)
    o_ids = tok.encode('"Toy Story (1995)"', add_special_tokens=False) + [tok.eos_token_id]
    assert ids.shape[0] == 24
    assert ids[0] == tok.bos_token_id
    assert ids[-len(o_ids) :].tolist() == o_ids
    kept = 24 - 1 - len(o_ids)
    assert ids[1 : 1 + kept].tolist() == full_p[-kept:]
    assert b["labels"][0, -len(o_ids) :].tolist() == o_ids


def test_bad_arguments(tok):
    with pytest.raises(ValueError, match="`prompts`"):
        tokenize_samples(tok, ["a"], [], max_length=8)
    with pytest.raises(ValueError, match="`loss_on`"):
        tokenize_samples(tok, ["a"], ["b"], max_length=8, loss_on="prompt")

"""Per-sample losses: agree with HF/torch, hidden-state variants, vmap on one sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from goracs_ray.data.prompts import format_prompt
from goracs_ray.models.lm import LoraSettings, load_causal_lm
from goracs_ray.models.losses import (
    causal_lm_loss,
    causal_lm_loss_from_hidden,
    ctr_logits,
    ctr_logits_from_hidden,
    ctr_loss,
    ctr_targets,
    ctr_token_ids,
    loss_window,
)
from goracs_ray.models.synthetic import synthetic_samples
from goracs_ray.models.text import tokenize_samples


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_causal_lm(tiny_model_dir, lora=LoraSettings())


def _batch(tok, task, n=5):
    rows = synthetic_samples(n, task=task, seed=4).to_pylist()
    prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
    return tokenize_samples(tok, prompts, [r["output"] for r in rows], max_length=96)


def _hidden(model, batch):
    base = model.get_base_model()
    return base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]


def test_causal_lm_loss_matches_hf_per_sample(lm):
    model, tok = lm
    b = _batch(tok, "seqrec")
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        ours = causal_lm_loss(logits, b["labels"])
        for i in range(b["input_ids"].shape[0]):
            n = int(b["attention_mask"][i].sum())
            ref = model(input_ids=b["input_ids"][i : i + 1, :n], labels=b["labels"][i : i + 1, :n])
            np.testing.assert_allclose(ours[i].item(), ref.loss.item(), rtol=1e-5)
        sparse = causal_lm_loss_from_hidden(_hidden(model, b), b["labels"], model.lm_head)
    np.testing.assert_allclose(sparse.numpy(), ours.numpy(), rtol=1e-5)


def test_causal_lm_loss_under_vmap(lm):
    model, tok = lm
    b = _batch(tok, "seqrec", n=3)
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"]).logits
    per = torch.func.vmap(lambda lg, lb: causal_lm_loss(lg[None], lb[None])[0])(logits, b["labels"])
    np.testing.assert_allclose(per.numpy(), causal_lm_loss(logits, b["labels"]).numpy(), rtol=1e-6)


def test_ctr_logits_and_loss(lm):
    model, tok = lm
    b = _batch(tok, "ctr", n=6)
    ids = ctr_token_ids(tok)
    yes_no = [tok.encode(w, add_special_tokens=False)[0] for w in ("No", "Yes")]
    assert ids.tolist() == yes_no
    rows = synthetic_samples(6, task="ctr", seed=4).to_pylist()
    targets = ctr_targets(b["labels"], ids)
    assert targets.tolist() == [r["label"] for r in rows]
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"]).logits
        two = ctr_logits(logits, b["labels"], ids)
        two_h = ctr_logits_from_hidden(_hidden(model, b), b["labels"], model.lm_head, ids)
    np.testing.assert_allclose(two_h.numpy(), two.numpy(), rtol=1e-5, atol=1e-6)
    first = (b["labels"] != -100).int().argmax(-1)
    for i in range(6):
        np.testing.assert_allclose(two[i].numpy(), logits[i, first[i] - 1, ids].numpy())
    ref = F.cross_entropy(two, targets, reduction="none")
    np.testing.assert_allclose(ctr_loss(logits, b["labels"], ids).numpy(), ref.numpy(), rtol=1e-6)


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_loss_window_gives_the_full_sequence_losses(lm, task):
    """`logits_to_keep=loss_window(labels)` (the fine-tuning path) changes no sample's loss."""
    from goracs_ray.data.schema import Task
    from goracs_ray.train.core import batch_losses

    model, tok = lm
    model.eval()
    b = _batch(tok, task, n=6)
    keep = loss_window(b["labels"])
    seq_len = b["labels"].shape[1]
    first = int((b["labels"] != -100).int().argmax(-1).min())
    assert keep == seq_len - first + 1 < seq_len  # the earliest answer's last prompt token onward
    ids = ctr_token_ids(tok)
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        full = (
            ctr_loss(logits, b["labels"], ids)
            if task == "ctr"
            else causal_lm_loss(logits, b["labels"])
        )
        windowed = batch_losses(model, b, task=Task(task), yes_no_ids=ids)
    np.testing.assert_allclose(windowed.numpy(), full.numpy(), rtol=1e-5, atol=1e-6)
    # One position fewer loses the earliest answer's first token: the window is the smallest.
    short = keep - 1
    if task == "seqrec":
        cut = causal_lm_loss(logits[:, -short:], b["labels"][:, -short:])
    else:
        cut = ctr_loss(logits[:, -short:], b["labels"][:, -short:], ids)
    assert not torch.allclose(cut, full)


def test_loss_window_edges():
    labels = torch.full((2, 7), -100)
    assert loss_window(labels) == 7  # no label: keep everything
    labels[0, 5:] = 1
    labels[1, 3:5] = 1
    assert loss_window(labels) == 5  # positions 2..6: the last prompt token of row 1 onward
    labels[1, 0] = 1
    assert loss_window(labels) == 7  # capped at T

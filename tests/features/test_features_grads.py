"""Vectorised per-sample gradients equal the per-sample loop (acceptance: rel. err ≤ 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goracs_ray.data.prompts import format_prompt
from goracs_ray.features.grads import per_sample_grads
from goracs_ray.models.lm import LoraSettings, load_causal_lm, target_parameter_names
from goracs_ray.models.losses import ctr_token_ids
from goracs_ray.models.synthetic import synthetic_samples
from goracs_ray.models.text import tokenize_samples


def _warm_model(path, attn="eager"):
    model, tok = load_causal_lm(path, lora=LoraSettings(), attn_implementation=attn)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model, tok


def _batch(tok, task, n=6):
    rows = synthetic_samples(n, task=task, seed=7).to_pylist()
    prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
    return tokenize_samples(tok, prompts, [r["output"] for r in rows], max_length=64)


@pytest.fixture(scope="module")
def warm(tiny_model_dir):
    return _warm_model(tiny_model_dir)


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
@pytest.mark.parametrize("target", ["last_v_lora_b", "all_lora"])
@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_vectorised_equals_loop(warm, task, target, method):
    model, tok = warm
    batch = _batch(tok, task)
    names = target_parameter_names(model, target)
    ids = ctr_token_ids(tok)
    ref = per_sample_grads(model, batch, names, task=task, method="loop", token_ids=ids)
    got = per_sample_grads(model, batch, names, task=task, method=method, token_ids=ids)
    assert got.grads.shape == ref.grads.shape
    assert (ref.norms > 0).all()
    np.testing.assert_allclose(got.norms.numpy(), ref.norms.numpy(), rtol=1e-4)
    np.testing.assert_allclose(got.grads.numpy(), ref.grads.numpy(), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(got.losses.numpy(), ref.losses.numpy(), rtol=1e-5)


def test_sdpa_hooks_equal_eager_loop(tiny_model_dir, warm):
    model, tok = warm
    fast, _ = _warm_model(tiny_model_dir, attn="sdpa")
    fast.load_state_dict(model.state_dict())
    batch = _batch(tok, "seqrec")
    names = target_parameter_names(model, "all_lora")
    ref = per_sample_grads(model, batch, names, method="loop")
    got = per_sample_grads(fast, batch, names, method="hooks")
    np.testing.assert_allclose(got.norms.numpy(), ref.norms.numpy(), rtol=1e-4)


def test_batch_composition_does_not_change_a_sample(warm):
    model, tok = warm
    batch = _batch(tok, "seqrec", n=6)
    names = target_parameter_names(model, "last_v_lora_b")
    full = per_sample_grads(model, batch, names).norms
    half = {k: v[:3, : int(batch["attention_mask"][:3].sum(1).max())] for k, v in batch.items()}
    np.testing.assert_allclose(
        per_sample_grads(model, half, names).norms.numpy(), full[:3].numpy(), rtol=1e-5
    )


def test_fresh_adapter_has_zero_lora_a_grads(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir, lora=LoraSettings())
    names = target_parameter_names(model, "all_lora")
    res = per_sample_grads(model, _batch(tok, "seqrec", n=2), names)
    sizes = [dict(model.named_parameters())[n].numel() for n in names]
    parts = torch.split(res.grads, sizes, dim=1)
    for name, part in zip(names, parts):
        if "lora_A" in name:
            assert float(part.abs().max()) == 0.0
        else:
            assert float(part.abs().max()) > 0.0


def test_ctr_needs_token_ids(warm):
    model, tok = warm
    with pytest.raises(ValueError, match="`token_ids`"):
        per_sample_grads(model, _batch(tok, "ctr", 2), ["x"], task="ctr")

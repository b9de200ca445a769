"""Vectorised per-sample gradients equal the per-sample loop (acceptance: rel. err ≤ 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goracs_ray.data.prompts import format_prompt
from goracs_ray.features.grads import per_sample_grads
from goracs_ray.features.llama_forward import fused_forward_problem, supports_fused_forward
from goracs_ray.models import text
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


def _batch(tok, task, n=6, **kwargs):
    rows = synthetic_samples(n, task=task, seed=7).to_pylist()
    prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
    kwargs.setdefault("max_length", 64)
    return tokenize_samples(tok, prompts, [r["output"] for r in rows], **kwargs)


@pytest.fixture(scope="module")
def warm(tiny_model_dir):
    return _warm_model(tiny_model_dir)


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
@pytest.mark.parametrize("target", ["last_v_lora_b", "all_lora"])
@pytest.mark.parametrize("method", ["hooks", "fused", "hooks_hf", "vmap"])
def test_vectorised_equals_loop(warm, task, target, method):
    model, tok = warm
    batch = _batch(tok, task, max_length=256)  # whole prompts: their instruction prefix shared
    names = target_parameter_names(model, target)
    assert supports_fused_forward(model, names)  # `fused` takes the LLaMA forward
    assert text.shared_prefix_length(batch["input_ids"]) > 0  # `hooks` shares the prefix
    ids = ctr_token_ids(tok)
    ref = per_sample_grads(model, batch, names, task=task, method="loop", token_ids=ids)
    got = per_sample_grads(model, batch, names, task=task, method=method, token_ids=ids)
    assert got.grads.shape == ref.grads.shape
    assert (ref.norms > 0).all()
    np.testing.assert_allclose(got.norms.numpy(), ref.norms.numpy(), rtol=1e-4)
    np.testing.assert_allclose(got.grads.numpy(), ref.grads.numpy(), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(got.losses.numpy(), ref.losses.numpy(), rtol=1e-5)


@pytest.mark.parametrize("method", ["hooks", "fused"])
def test_sdpa_hooks_equal_eager_loop(tiny_model_dir, warm, method):
    model, tok = warm
    fast, _ = _warm_model(tiny_model_dir, attn="sdpa")
    fast.load_state_dict(model.state_dict())
    batch = _batch(tok, "seqrec")
    names = target_parameter_names(model, "all_lora")
    ref = per_sample_grads(model, batch, names, method="loop")
    got = per_sample_grads(fast, batch, names, method=method)
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


@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "model.layers.1.no_such.weight"])
def test_hooks_refuse_targets_that_are_not_bias_free_linears(warm, name):
    model, tok = warm
    prefix = target_parameter_names(model, "last_v_lora_b")[0].split("model.layers.")[0]
    with pytest.raises(ValueError, match="bias-free Linear weights"):
        per_sample_grads(model, _batch(tok, "seqrec"), [prefix + name], method="hooks")


def _only_trainable(model, names):
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)


@pytest.mark.parametrize("method", ["hooks", "fused"])
@pytest.mark.parametrize("task", ["seqrec", "ctr"])
@pytest.mark.parametrize("target", ["last_v_lora_b", "all_lora"])
def test_hidden_states_equal_hf(tiny_model_dir, warm, task, target, method):
    """Production setting (only the target trainable, sdpa): norms equal the loop, and the
    hidden states asked for embeddings equal the HF forward's at every position."""
    model, tok = _warm_model(tiny_model_dir, attn="sdpa")
    model.load_state_dict(warm[0].state_dict())
    names = target_parameter_names(model, target)
    _only_trainable(model, names)
    batch = _batch(tok, task, n=5, max_length=256)
    ids = ctr_token_ids(tok)
    ref = per_sample_grads(model, batch, names, task=task, method="loop", token_ids=ids)
    hf = per_sample_grads(model, batch, names, task=task, method="hooks_hf", token_ids=ids,
                          with_hidden=True)  # fmt: skip
    got = per_sample_grads(
        model, batch, names, task=task, method=method, token_ids=ids, with_hidden=True
    )
    np.testing.assert_allclose(got.norms.numpy(), ref.norms.numpy(), rtol=1e-4)
    np.testing.assert_allclose(got.losses.numpy(), ref.losses.numpy(), rtol=1e-5)
    real = batch["attention_mask"].bool()
    np.testing.assert_allclose(got.hidden[real].numpy(), hf.hidden[real].numpy(), atol=1e-4)
    without = per_sample_grads(model, batch, names, task=task, method=method, token_ids=ids)
    assert without.hidden is None


@pytest.mark.parametrize("method", ["hooks", "fused"])
@pytest.mark.parametrize("target", ["last_v_lora_b", "all_lora"])
def test_shared_prefix_path_equals_plain_path(warm, monkeypatch, method, target):
    model, tok = warm
    batch = _batch(tok, "seqrec", n=6, max_length=256)
    assert text.shared_prefix_length(batch["input_ids"]) >= text.MIN_SHARED_PREFIX
    names = target_parameter_names(model, target)
    embed = model.get_base_model().get_decoder().embed_tokens
    seen = []
    handle = embed.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape))
    try:
        shared = per_sample_grads(model, batch, names, method=method)
    finally:
        handle.remove()
    prefix, rows = text.shared_prefix_length(batch["input_ids"]), batch["input_ids"].shape[0]
    if method == "hooks" or target == "last_v_lora_b":  # fused: below its first target only
        assert seen[0] == (1, prefix)  # the prefix once, then every row's own tokens
        assert {shape[0] for shape in seen[1:]} == {rows}
        assert sum(shape[1] for shape in seen[1:]) == batch["input_ids"].shape[1] - prefix
    if method == "hooks":  # prefix, the prompts up to the first loss position, the rest
        assert len(seen) == 3
    monkeypatch.setattr(text, "MIN_SHARED_PREFIX", 10**9)
    assert text.shared_prefix_length(batch["input_ids"]) == 0
    plain = per_sample_grads(model, batch, names, method=method)
    np.testing.assert_allclose(shared.norms.numpy(), plain.norms.numpy(), rtol=1e-5)
    np.testing.assert_allclose(shared.grads.numpy(), plain.grads.numpy(), rtol=1e-4, atol=1e-7)


def test_common_prefix_leaves_every_row_a_token(monkeypatch):
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4]])
    assert text.shared_prefix_length(ids) == 0  # shorter than MIN_SHARED_PREFIX
    monkeypatch.setattr(text, "MIN_SHARED_PREFIX", 1)
    assert text.shared_prefix_length(ids) == 3
    assert text.shared_prefix_length(ids[[0, 2]]) == 3  # identical rows
    assert text.shared_prefix_length(ids[:1]) == 0  # one row: nothing to share
    assert text.shared_prefix_length(torch.tensor([[1, 2], [3, 2]])) == 0


@pytest.mark.parametrize("method", ["hooks", "fused"])
@pytest.mark.parametrize("target", ["last_v_lora_b", "all_lora"])
def test_loss_on_all_tokens(warm, method, target):
    """The loss also on the shared prefix's tokens: each row's gradient through the prefix
    positions is its own (the stock path's per-row prefix hidden states)."""
    model, tok = warm
    batch = _batch(tok, "seqrec", n=4, loss_on="all", max_length=256)
    assert text.shared_prefix_length(batch["input_ids"]) > 0
    names = target_parameter_names(model, target)
    ref = per_sample_grads(model, batch, names, method="loop")
    got = per_sample_grads(model, batch, names, method=method)
    np.testing.assert_allclose(got.norms.numpy(), ref.norms.numpy(), rtol=1e-4)
    np.testing.assert_allclose(got.losses.numpy(), ref.losses.numpy(), rtol=1e-5)


def test_fused_forward_capability_check(warm):
    """The fused forward is chosen by the modules it calls, not by `model_type`."""
    model, _ = warm
    names = target_parameter_names(model, "last_v_lora_b")
    assert supports_fused_forward(model, names)
    assert not supports_fused_forward(torch.nn.Linear(2, 2), ["weight"])
    assert not supports_fused_forward(model, ["base_model.model.lm_head.weight"])
    layer = model.get_base_model().get_decoder().layers[0]
    layer.pre_feedforward_layernorm = torch.nn.Identity()  # a layout it does not compute
    try:
        assert "pre_feedforward_layernorm" in fused_forward_problem(model, names)
    finally:
        del layer.pre_feedforward_layernorm
    assert supports_fused_forward(model, names)


def test_llama_forward_is_ray_free():
    import subprocess
    import sys

    code = "import sys, goracs_ray.features.llama_forward, goracs_ray.features.grads\n"
    code += "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]\n"
    subprocess.run([sys.executable, "-c", code], check=True)


def _check_shared_prefix_batch(model, tok, names):
    """On 5 rows sharing their prompt prefix: `hooks` and `fused` norms and gradients equal the
    per-sample loop's, their hidden states the HF forward's. Returns the batch."""
    batch = _batch(tok, "seqrec", n=5, max_length=256)
    assert text.shared_prefix_length(batch["input_ids"]) >= text.MIN_SHARED_PREFIX
    ref = per_sample_grads(model, batch, names, method="loop")
    hf = per_sample_grads(model, batch, names, method="hooks_hf", with_hidden=True)
    assert (ref.norms > 0).all()
    real = batch["attention_mask"].bool()
    for method in ("hooks", "fused"):
        got = per_sample_grads(model, batch, names, method=method, with_hidden=True)
        np.testing.assert_allclose(got.norms.numpy(), ref.norms.numpy(), rtol=1e-4)
        np.testing.assert_allclose(got.grads.numpy(), ref.grads.numpy(), rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(got.hidden[real].numpy(), hf.hidden[real].numpy(), atol=1e-4)
    return batch


@pytest.mark.parametrize(
    "targets",
    [
        ("v_proj.lora_B",),  # the default: prefix through base + lora_A once, lora_B per row
        ("k_proj.lora_B",),  # keys per row, values' prefix once
        ("v_proj.lora_A",),  # lora_A needs every row's input: the joined rows
        ("q_proj.lora_A", "q_proj.lora_B", "k_proj.lora_A", "v_proj.lora_B"),
    ],
)
def test_last_layer_targets_with_shared_prefix(tiny_model_dir, targets):
    """Any LoRA matrix of the last layer as target, with the prompt prefix shared across the
    batch: norms equal the loop and the hidden states equal the HF forward's."""
    model, tok = load_causal_lm(
        tiny_model_dir,
        lora=LoraSettings(target_modules=("q_proj", "k_proj", "v_proj")),
        attn_implementation="sdpa",
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    last = max(int(n.split(".layers.")[1].split(".")[0]) for n, _ in model.named_parameters()
               if ".layers." in n)  # fmt: skip
    names = [n for n, _ in model.named_parameters()
             if f".layers.{last}." in n and any(f".{t}." in n for t in targets)]  # fmt: skip
    assert len(names) == len(targets)
    _only_trainable(model, names)
    _check_shared_prefix_batch(model, tok, names)


def _model_of_type(tiny_model_dir, out, model_type: str, **overrides):
    """The tiny model's sizes and tokenizer in another architecture, random weights (biases too)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    llama = AutoConfig.from_pretrained(tiny_model_dir)
    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
             "bos_token_id", "eos_token_id", "pad_token_id")  # fmt: skip
    config = AutoConfig.for_model(model_type, **{k: getattr(llama, k) for k in sizes} | overrides)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".bias", "norm.weight")):  # not 0 / 1 (every RMSNorm too)
                p.add_(torch.randn_like(p), alpha=0.2)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.mark.parametrize(
    ("model_type", "overrides", "target", "fast"),
    [
        ("llama", {"num_key_value_heads": 2}, "last_v_lora_b", True),  # grouped-query attention
        ("llama", {"num_key_value_heads": 2}, "all_lora", True),
        ("qwen2", {"num_key_value_heads": 2}, "last_v_lora_b", True),  # q/k/v biases
        ("qwen3", {"head_dim": 8}, "last_v_lora_b", True),  # per-head q/k RMSNorm
        ("qwen3", {"head_dim": 8}, "all_lora", True),
        ("mistral", {"sliding_window": None}, "last_v_lora_b", True),
        ("mistral", {"sliding_window": 16}, "last_v_lora_b", False),  # window < batch: HF forward
    ],
)
def test_llama_like_architectures(tiny_model_dir, tmp_path, model_type, overrides, target, fast):
    """LLaMA-like models (grouped-query attention as LLaMA-3, Qwen2's biases, Qwen3's q/k norms,
    Mistral's window): per-sample norms equal the loop and hidden states the HF forward's; the
    LLaMA forward is used exactly when it is exact."""
    path = _model_of_type(tiny_model_dir, tmp_path, model_type, **overrides)
    model, tok = _warm_model(path, attn="sdpa")
    names = target_parameter_names(model, target)
    _only_trainable(model, names)
    batch = _check_shared_prefix_batch(model, tok, names)
    assert supports_fused_forward(model, names, batch["input_ids"].shape[1]) is fast


@pytest.mark.parametrize("fault", ["wrong", "raises"])
def test_a_broken_fused_forward_falls_back_to_the_stock_path(warm, monkeypatch, caplog, fault):
    """A fused forward that returns wrong values, or raises, is caught on the first batch: the
    stock HF path's norms come back, with one warning, and the fused path is not used again."""
    import logging

    from goracs_ray.features import grads

    model, tok = warm
    batch = _batch(tok, "seqrec")
    names = target_parameter_names(model, "last_v_lora_b")
    stock = per_sample_grads(model, batch, names, method="hooks")
    good = grads.CheckedGrads("fused")
    np.testing.assert_allclose(good(model, batch, names).norms, stock.norms, rtol=1e-4)
    assert good.fused is True  # verified: the fused path serves the next batches

    real = grads.llama_losses

    def broken(*args, **kwargs):
        if fault == "raises":
            raise AttributeError("'LlamaAttention' object has no attribute 'renamed_in_v6'")
        losses, hidden = real(*args, **kwargs)
        return losses * 1.5, hidden  # wrong losses: wrong gradients

    monkeypatch.setattr(grads, "llama_losses", broken)
    checked = grads.CheckedGrads("fused")
    with caplog.at_level(logging.WARNING, logger="goracs_ray.features.grads"):
        first = checked(model, batch, names)
        second = checked(model, batch, names)
    np.testing.assert_allclose(first.norms, stock.norms, rtol=1e-6)
    np.testing.assert_allclose(second.norms, stock.norms, rtol=1e-6)
    assert checked.fused is False
    warnings = [r for r in caplog.records if "fused LLaMA forward disabled" in r.getMessage()]
    assert len(warnings) == 1

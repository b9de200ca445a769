"""load_causal_lm: fresh LoRA, adapter warm start, trainable targets, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goracs_ray.models.lm import GradTarget, LoraSettings, load_causal_lm, target_parameter_names


def test_fresh_lora_and_targets(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir, lora=LoraSettings(r=4), trainable="last_v_lora_b")
    assert tok.padding_side == "right"
    assert not model.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == target_parameter_names(model, GradTarget.LAST_V_LORA_B)
    assert len(trainable) == 1
    assert "layers.1.self_attn.v_proj.lora_B" in trainable[0]
    all_lora = target_parameter_names(model, GradTarget.ALL_LORA)
    assert len(all_lora) == 2 * 2 * 2  # layers × (q, v) × (A, B)
    b = dict(model.named_parameters())[trainable[0]]
    assert b.shape == (model.config.hidden_size, 4)
    assert float(b.detach().abs().sum()) == 0.0


def test_adapter_warm_start_roundtrip(tmp_path, tiny_model_dir):
    model, _ = load_causal_lm(tiny_model_dir, lora=LoraSettings())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load_causal_lm(tiny_model_dir, adapter_path=tmp_path / "adapter")
    want = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    got = {n: p for n, p in again.named_parameters() if "lora_B" in n}
    assert want.keys() == got.keys()
    for n in want:
        np.testing.assert_array_equal(want[n].detach().numpy(), got[n].detach().numpy())
        assert got[n].requires_grad


def test_errors(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="`model_path`"):
        load_causal_lm(tmp_path)
    with pytest.raises(FileNotFoundError, match="`adapter_path`"):
        load_causal_lm(tiny_model_dir, adapter_path=tmp_path)
    with pytest.raises(ValueError, match="`r`"):
        LoraSettings(r=0)
    plain, _ = load_causal_lm(tiny_model_dir)
    with pytest.raises(ValueError, match="LoRA"):
        target_parameter_names(plain, "all_lora")


def test_fresh_adapter_is_seeded(tiny_model_dir):
    a, _ = load_causal_lm(tiny_model_dir, lora=LoraSettings())
    b, _ = load_causal_lm(tiny_model_dir, lora=LoraSettings())
    c, _ = load_causal_lm(tiny_model_dir, lora=LoraSettings(), seed=1)
    pa_, pb_, pc_ = (dict(m.named_parameters()) for m in (a, b, c))
    name = next(n for n in pa_ if "lora_A" in n)
    np.testing.assert_array_equal(pa_[name].detach().numpy(), pb_[name].detach().numpy())
    assert not np.array_equal(pa_[name].detach().numpy(), pc_[name].detach().numpy())

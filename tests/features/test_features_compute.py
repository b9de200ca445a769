"""FeatureComputer, token batching, embeddings, warm-up, config checks, DeepSpeed = torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from goracs_ray.data.prompts import format_prompt
from goracs_ray.data.schema import FEATURE_COLUMNS
from goracs_ray.features.compute import (
    SECONDS_METADATA_KEY,
    FeatureComputer,
    token_batches,
    warmup_adapter,
)
from goracs_ray.features.config import FeaturesConfig
from goracs_ray.features.embed import SentenceEncoder, embedding_texts, pool_hidden, token_mask
from goracs_ray.models.config import LoraSettings, ModelConfig
from goracs_ray.models.synthetic import synthetic_samples


def _rows(n, task="seqrec", seed=3):
    rows = synthetic_samples(n, task=task, seed=seed).to_pylist()
    return (
        [r["sample_id"] for r in rows],
        [r["split"] for r in rows],
        [format_prompt(r["instruction"], r["input"]) for r in rows],
        [r["output"] for r in rows],
    )


def test_token_batches_cover_once_within_budget():
    lengths = np.random.default_rng(0).integers(5, 60, size=101)
    batches = token_batches(lengths, 200)
    flat = np.concatenate(batches)
    np.testing.assert_array_equal(np.sort(flat), np.arange(101))
    for b in batches:
        assert len(b) * lengths[b].max() <= 200 or len(b) == 1
    assert token_batches([500, 3], 100)[0].tolist() == [0]


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_computer_output_and_batching_invariance(tiny_model_dir, task):
    small = FeaturesConfig(max_length=128, batch_tokens=128, proj_dim=32)
    large = FeaturesConfig(max_length=128, batch_tokens=4096, proj_dim=32)
    ids, splits, prompts, outputs = _rows(12, task)
    model = ModelConfig(path=tiny_model_dir)
    a = FeatureComputer(small, model, task, tiny_model_dir, None).compute(
        ids, splits, prompts, outputs
    )
    b = FeatureComputer(large, model, task, tiny_model_dir, None).compute(
        ids, splits, prompts, outputs
    )
    assert a.column_names == list(FEATURE_COLUMNS)
    assert a["sample_id"].to_pylist() == ids
    for col in ("grad_norm", "loss"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-4)
    emb_a = np.stack(a["embedding"].to_numpy(zero_copy_only=False))
    emb_b = np.stack(b["embedding"].to_numpy(zero_copy_only=False))
    assert emb_a.shape == (12, 32)
    np.testing.assert_allclose(emb_a, emb_b, rtol=1e-4, atol=1e-5)
    proj = np.stack(a["grad_proj"].to_numpy(zero_copy_only=False))
    assert proj.shape == (12, 32)
    assert (a["grad_norm"].to_numpy() > 0).all()
    # the cost of each part travels with the table (and its Parquet shard)
    seconds = json.loads(a.schema.metadata[SECONDS_METADATA_KEY])
    assert set(seconds) == {"gradients", "projection", "embedding"}
    assert seconds["gradients"] > 0
    assert seconds["projection"] > 0
    no_proj = FeaturesConfig(max_length=128, batch_tokens=4096)
    c = FeatureComputer(no_proj, model, task, tiny_model_dir, None).compute(
        ids, splits, prompts, outputs
    )
    assert "grad_proj" not in c.column_names
    assert json.loads(c.schema.metadata[SECONDS_METADATA_KEY])["projection"] == 0.0


def test_ctr_whole_sample_loss_is_the_token_loss_over_prompt_and_answer(tiny_model_dir):
    """CTR with `loss_on: all` (the reference's CTR gradients, METHOD.md §6): each sample's loss
    is the causal-LM loss averaged over every token, prompt and answer, of one plain forward;
    the norms vary across samples (they once were one constant: the Yes/No logits read at the
    first token) and differ from the answer-only ones; the LLM embedding stays the prompt's."""
    from goracs_ray.models.losses import causal_lm_loss
    from goracs_ray.models.text import tokenize_samples

    ids, splits, prompts, outputs = _rows(10, "ctr")
    model = ModelConfig(path=tiny_model_dir)
    whole_cfg = FeaturesConfig(max_length=128, loss_on="all")
    whole_fc = FeatureComputer(whole_cfg, model, "ctr", tiny_model_dir, None)
    whole = whole_fc.compute(ids, splits, prompts, outputs)
    answer = FeatureComputer(FeaturesConfig(max_length=128), model, "ctr", tiny_model_dir, None)
    answer = answer.compute(ids, splits, prompts, outputs)

    batch = tokenize_samples(whole_fc.tokenizer, prompts, outputs, max_length=128, loss_on="all")
    with torch.no_grad():
        logits = whole_fc.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    expected = causal_lm_loss(logits, batch["labels"]).numpy()
    np.testing.assert_allclose(whole["loss"].to_numpy(), expected, rtol=1e-4)
    assert (batch["labels"] != -100).sum(1).min() > 5  # the prompt is in the loss

    norms = whole["grad_norm"].to_numpy()
    assert np.ptp(norms) > 1e-3 * norms.mean()
    assert not np.allclose(norms, answer["grad_norm"].to_numpy(), rtol=1e-2)
    assert not np.allclose(whole["loss"].to_numpy(), answer["loss"].to_numpy(), rtol=1e-2)
    emb = [np.stack(t["embedding"].to_numpy(zero_copy_only=False)) for t in (whole, answer)]
    np.testing.assert_allclose(emb[0], emb[1], rtol=1e-5, atol=1e-6)


def test_ctr_embeds_prompt_only():
    batch = {
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0]]),
        "labels": torch.tensor([[-100, -100, -100, 7, -100]]),
    }
    mask = token_mask(batch, "ctr", answer_lengths=torch.tensor([1]))
    assert mask.tolist() == [[True, True, True, False, False]]
    hidden = torch.arange(5.0).view(1, 5, 1)
    assert pool_hidden(hidden, mask, "llm_mean").item() == 1.0
    assert pool_hidden(hidden, mask, "llm_last").item() == 2.0
    assert pool_hidden(hidden, token_mask(batch, "seqrec"), "llm_mean").item() == 1.5
    whole = {**batch, "labels": torch.tensor([[-100, 5, 6, 7, -100]])}  # `loss_on: all`
    assert token_mask(whole, "ctr", answer_lengths=torch.tensor([1])).tolist() == mask.tolist()
    with pytest.raises(ValueError, match="`answer_lengths` is required"):
        token_mask(batch, "ctr")
    assert embedding_texts(["p"], ["o"], "ctr") == ["p"]
    assert embedding_texts(["p"], ["o"], "seqrec") == ["po"]


def test_sentence_encoder_offline_minilm():
    enc = SentenceEncoder(batch_size=2)
    emb = enc.encode(["Toy Story (1995)", "Toy Story 2 (1999)", "Pulp Fiction (1994)"])
    assert emb.shape == (3, 384)
    assert emb.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[0], emb[1], dim=0) > cos(emb[0], emb[2], dim=0)


def test_warmup_makes_lora_a_grads_nonzero(tmp_path, tiny_model_dir):
    from goracs_ray.features.grads import per_sample_grads
    from goracs_ray.models.lm import load_causal_lm, target_parameter_names
    from goracs_ray.models.text import tokenize_samples

    cfg = FeaturesConfig(grad_target="all_lora", warmup_steps=3, max_length=96)
    _, _, prompts, outputs = _rows(16)
    adapter = warmup_adapter(cfg, LoraSettings(), tiny_model_dir, prompts, outputs, tmp_path / "ad")
    model, tok = load_causal_lm(tiny_model_dir, adapter_path=adapter)
    names = target_parameter_names(model, "all_lora")
    batch = tokenize_samples(tok, prompts[:3], outputs[:3], max_length=96)
    grads = per_sample_grads(model, batch, names).grads
    sizes = [dict(model.named_parameters())[n].numel() for n in names]
    for name, part in zip(names, torch.split(grads, sizes, dim=1)):
        assert float(part.abs().min(dim=1).values.max()) >= 0.0
        assert float(part.abs().max()) > 0.0, name


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_actors": 0}, "max_actors"),
        ({"batch_tokens": 10}, "batch_tokens"),
        ({"grad_method": "vmap"}, "vmap"),
        ({"actor_cpus": 0}, "actor_cpus"),
        ({"actor_gpus": -1}, "actor_gpus"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    from goracs_ray.configutil import from_dict

    with pytest.raises(ValueError, match=field):
        from_dict(FeaturesConfig, kwargs)


@pytest.mark.parametrize(
    ("key", "new"),
    [
        ("model_path", "model.path"),
        ("lora", "model.lora"),
        ("dtype", "model.dtype"),
        ("engine", "model.deepspeed"),
        ("task", "data.task"),
    ],
)
def test_moved_model_keys_name_their_new_place(key, new):
    from goracs_ray.configutil import from_dict

    with pytest.raises(ValueError, match=rf"`features\.{key}` has moved to `{re.escape(new)}`"):
        from_dict(FeaturesConfig, {key: "x"}, where="features")


_DS_SCRIPT = """
import sys, numpy as np
from goracs_ray.features.compute import FeatureComputer
from goracs_ray.features.config import FeaturesConfig
from goracs_ray.models.config import ModelConfig
from goracs_ray.models.synthetic import synthetic_samples
from goracs_ray.data.prompts import format_prompt
rows = synthetic_samples(6, seed=5).to_pylist()
args = ([r["sample_id"] for r in rows], ["train"] * 6,
        [format_prompt(r["instruction"], r["input"]) for r in rows], [r["output"] for r in rows])
out = {}
for engine in ("torch", "deepspeed"):
    import torch; torch.manual_seed(0)
    cfg = FeaturesConfig(grad_target="all_lora")
    model = ModelConfig(deepspeed=int(sys.argv[2]) if engine == "deepspeed" else None)
    computer = FeatureComputer(cfg, model, "seqrec", sys.argv[1], None)
    out[engine] = computer.compute(*args)["grad_norm"].to_numpy()
np.testing.assert_allclose(out["deepspeed"], out["torch"], rtol=1e-5)
assert (out["torch"] > 0).all()
print("OK", out["torch"][:3])
"""


@pytest.mark.parametrize("stage", [0, 3])
def test_deepspeed_engine_gives_same_norms(tiny_model_dir, stage):
    res = subprocess.run(
        [sys.executable, "-c", _DS_SCRIPT, str(tiny_model_dir), str(stage)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK" in res.stdout

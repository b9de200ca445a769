"""Likelihood ranking: the KV-cached scorer equals the full forward and the fine-tuning loss."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from goracs_ray.data.prompts import format_prompt
from goracs_ray.data.samples import seqrec_output
from goracs_ray.evaluate import EvalConfig, evaluate, ranking_metrics
from goracs_ray.evaluate.likelihood import candidate_scores
from goracs_ray.evaluate.metrics import rank_of_target
from goracs_ray.io import read_json
from goracs_ray.models.lm import LoraSettings, load_causal_lm
from goracs_ray.models.losses import causal_lm_loss
from goracs_ray.models.text import tokenize_samples

MAX_LENGTH = 96


@pytest.fixture
def fresh_embedding_cache(monkeypatch):
    """Grounding's in-memory catalog cache, emptied for this test (other tests expect misses)."""
    monkeypatch.setattr("goracs_ray.evaluate.grounding._MEMORY_CACHE", {})


@pytest.fixture(scope="module")
def models(eval_model_dir):
    """``{"plain": (model, tok), "lora": (peft model with random lora_B, tok)}`` on CPU."""
    plain = load_causal_lm(eval_model_dir, attn_implementation="sdpa", trainable=None)
    torch.manual_seed(0)
    lora, tok = load_causal_lm(eval_model_dir, lora=LoraSettings(r=4, alpha=8), trainable=None)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return {"plain": plain, "lora": (lora.eval(), tok)}


@pytest.fixture(scope="module")
def batch(eval_data):
    """3 prompts (one ~3x too long for MAX_LENGTH → left-truncated) × 5 candidates of 1–4 words."""
    rows = pq.read_table(eval_data["seqrec"]).to_pylist()[:3]
    prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
    prompts[1] = prompts[1][:150]  # a short prompt next to longer ones
    prompts[2] = format_prompt(rows[2]["instruction"], rows[2]["input"] * 3)
    titles = pq.read_table(eval_data["items"]).column("title").to_pylist()
    cands = [[seqrec_output(t) for t in titles[5 * i : 5 * i + 5]] for i in range(3)]
    return prompts, cands


@pytest.mark.parametrize("which", ["plain", "lora"])
def test_cached_scores_equal_full_forward(models, batch, which):
    model, tok = models[which]
    prompts, cands = batch
    lengths = {len(tok.encode(c, add_special_tokens=False)) for row in cands for c in row}
    assert len(lengths) > 1  # candidates of different token lengths
    assert len(tok.encode(prompts[2])) > MAX_LENGTH  # the long prompt is truncated
    ref = candidate_scores(model, tok, prompts, cands, max_length=MAX_LENGTH, use_cache=False)
    for chunk in (2, 100):  # chunked candidates change nothing
        got = candidate_scores(
            model, tok, prompts, cands, max_length=MAX_LENGTH, candidate_batch=chunk
        )
        assert got.shape == (3, 5)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert (ref < 0).all()
    assert np.ptp(ref, axis=1).min() > 1e-3  # the candidates are told apart


def test_lora_changes_the_scores(models, batch):
    prompts, cands = batch
    plain = candidate_scores(*models["plain"], prompts, cands, max_length=MAX_LENGTH)
    lora = candidate_scores(*models["lora"], prompts, cands, max_length=MAX_LENGTH)
    assert np.abs(plain - lora).max() > 1e-2


@pytest.mark.parametrize("which", ["plain", "lora"])
def test_score_is_minus_the_finetuning_loss(models, batch, which):
    """Every (prompt, candidate) score = −causal_lm_loss of the training tokenisation."""
    model, tok = models[which]
    prompts, cands = batch
    got = candidate_scores(model, tok, prompts, cands, max_length=MAX_LENGTH)
    flat_p = [p for p, row in zip(prompts, cands) for _ in row]
    flat_o = [c for row in cands for c in row]
    enc = tokenize_samples(tok, flat_p, flat_o, max_length=MAX_LENGTH)
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        loss = causal_lm_loss(logits, enc["labels"]).double().numpy()
    np.testing.assert_allclose(got.ravel(), -loss, atol=1e-4, rtol=0)


def test_candidate_scores_rejects_ragged_candidates(models):
    model, tok = models["plain"]
    with pytest.raises(ValueError, match="same number of candidates"):
        candidate_scores(model, tok, ["a", "b"], [["x"], ["x", "y"]], max_length=32)
    with pytest.raises(ValueError, match="candidate_batch"):
        candidate_scores(model, tok, ["a"], [["x"]], max_length=32, candidate_batch=0)


def _evaluate_seqrec(cfg, tmp_path, eval_data, eval_model_dir):
    """`evaluate` of the base model on the SeqRec fixture samples into ``tmp_path/eval``."""
    return evaluate(
        cfg,
        model=eval_model_dir,
        adapter_path=None,
        test_samples=eval_data["seqrec"],
        items=eval_data["items"],
        out_dir=tmp_path / "eval",
    )


@pytest.mark.usefixtures("fresh_embedding_cache")
def test_seqrec_evaluate_reports_both_rankings(tmp_path, eval_data, eval_model_dir):
    cfg = EvalConfig(batch_size=4, num_beams=2, max_new_tokens=8, max_length=128, candidate_batch=4)
    result = _evaluate_seqrec(cfg, tmp_path, eval_data, eval_model_dir)
    preds = pq.read_table(tmp_path / "eval" / "predictions.parquet")
    assert preds.column_names == ["sample_id", "rank", "target_loss", "grounded_rank", "generated"]
    types = {f.name: str(f.type) for f in preds.schema}
    assert types == {
        "sample_id": "string",
        "rank": "int64",
        "target_loss": "double",
        "grounded_rank": "int64",
        "generated": "string",
    }
    p = preds.to_pydict()
    rank, grounded = np.asarray(p["rank"]), np.asarray(p["grounded_rank"])
    for key, value in ranking_metrics(rank, cfg.ks).items():
        np.testing.assert_allclose(result[key], value)
    for key, value in ranking_metrics(grounded, cfg.ks).items():
        np.testing.assert_allclose(result[f"grounded_{key}"], value)
    np.testing.assert_allclose(result["mean_rank"], rank.mean())
    np.testing.assert_allclose(result["grounded_mean_rank"], grounded.mean())
    np.testing.assert_allclose(result["test_loss"], np.mean(p["target_loss"]))
    # the ranks and the loss are those of candidate_scores on the same candidates
    model, tok = load_causal_lm(eval_model_dir, trainable=None)
    samples = pq.read_table(eval_data["seqrec"]).to_pylist()
    items = pq.read_table(eval_data["items"]).to_pydict()
    titles = dict(zip(items["item_id"], items["title"]))
    prompts = [format_prompt(r["instruction"], r["input"]) for r in samples]
    cands = [
        [seqrec_output(titles[i]) for i in [r["target_item"], *r["negatives"]]] for r in samples
    ]
    scores = candidate_scores(model, tok, prompts, cands, max_length=128)
    np.testing.assert_array_equal(rank, rank_of_target(-scores))
    np.testing.assert_allclose(p["target_loss"], -scores[:, 0], atol=1e-6)


@pytest.mark.usefixtures("fresh_embedding_cache")
def test_seqrec_grounding_only_keeps_the_prefix(tmp_path, eval_data, eval_model_dir):
    cfg = EvalConfig(num_beams=2, max_new_tokens=4, max_length=128, seqrec_ranking=["grounding"])
    result = _evaluate_seqrec(cfg, tmp_path, eval_data, eval_model_dir)
    assert {"grounded_ndcg@10", "grounded_hr@10", "grounded_mean_rank"} <= set(result)
    assert not {"ndcg@10", "mean_rank", "test_loss"} & set(result)
    preds = pq.read_table(tmp_path / "eval" / "predictions.parquet")
    assert preds.column_names == ["sample_id", "grounded_rank", "generated"]
    metrics = read_json(tmp_path / "eval" / "metrics.json")
    assert metrics["grounded_mean_rank"] == result["grounded_mean_rank"]


def test_seqrec_likelihood_only(tmp_path, eval_data, eval_model_dir):
    cfg = EvalConfig(max_length=128, seqrec_ranking=["likelihood"])
    result = _evaluate_seqrec(cfg, tmp_path, eval_data, eval_model_dir)
    assert {"ndcg@10", "hr@10", "mean_rank", "test_loss"} <= set(result)
    assert not any(k.startswith("grounded_") for k in result)
    preds = pq.read_table(tmp_path / "eval" / "predictions.parquet")
    assert preds.column_names == ["sample_id", "rank", "target_loss"]


@pytest.mark.parametrize("value", [[], ["beam"], ["likelihood", "bleu"]])
def test_seqrec_ranking_is_validated(value):
    with pytest.raises(ValueError, match="eval.seqrec_ranking"):
        EvalConfig(seqrec_ranking=value)

"""End-to-end evaluation with a real tiny LLaMA + peft adapter on a few samples (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from goracs_ray.evaluate import EvalConfig, auc, evaluate, log_loss, ranking_metrics
from goracs_ray.evaluate.grounding import candidate_distances, catalog_embeddings
from goracs_ray.evaluate.metrics import rank_of_target
from goracs_ray.io import read_json
from goracs_ray.models.lm import LoraSettings, load_causal_lm


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, eval_model_dir):
    """A saved peft adapter with non-zero lora_B (so it changes the model's outputs)."""
    torch.manual_seed(0)
    model, _ = load_causal_lm(eval_model_dir, lora=LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapters") / "a"
    model.save_pretrained(out)
    return out


def test_seqrec_evaluate_end_to_end(tmp_path, eval_data, eval_model_dir, adapter_dir):
    cfg = EvalConfig(
        batch_size=4,
        num_beams=2,
        num_return_sequences=2,
        max_new_tokens=8,
        max_length=128,
        cache_dir=str(tmp_path / "cache"),
    )
    out = tmp_path / "eval"
    result = evaluate(
        cfg,
        model=eval_model_dir,
        adapter_path=adapter_dir,
        test_samples=eval_data["seqrec"],
        items=eval_data["items"],
        out_dir=out,
    )
    assert read_json(out / "metrics.json") == result
    assert result["task"] == "seqrec"
    assert result["n"] == 6
    preds = pq.read_table(out / "predictions.parquet").to_pydict()
    ranks = np.asarray(preds["rank"])
    assert ranks.min() >= 0
    assert ranks.max() <= 9
    # metrics.json is exactly the pure metric functions applied to the per-sample ranks
    for key, value in ranking_metrics(ranks, [1, 5, 10, 20]).items():
        np.testing.assert_allclose(result[key], value)
    np.testing.assert_allclose(result["hr@10"], 1.0)  # 10 candidates: always within the top 10
    assert list((tmp_path / "cache").glob("item_emb_*.npy"))


def test_grounding_ranks_the_exact_title_first(eval_data, eval_model_dir):
    """A generated text equal to the target's title is at distance 0 → rank 0."""
    model, tok = load_causal_lm(eval_model_dir)
    items = pq.read_table(eval_data["items"]).to_pydict()
    emb = catalog_embeddings(model, tok, items["title"], model_key="t", batch_size=16)
    assert emb.shape == (len(items["title"]), model.config.hidden_size)
    assert emb.dtype == np.float32
    cand = np.array([[3, 0, 1, 2, 4], [7, 8, 9, 10, 11]])
    dist = candidate_distances(emb[cand[:, :1]], emb, cand)
    np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-5)
    np.testing.assert_array_equal(rank_of_target(dist), [0, 0])


def test_ctr_evaluate_end_to_end(tmp_path, eval_data, eval_model_dir, adapter_dir):
    out = tmp_path / "eval"
    result = evaluate(
        EvalConfig(batch_size=3, max_length=128),
        model=eval_model_dir,
        adapter_path=adapter_dir,
        test_samples=eval_data["ctr"],
        items=None,
        out_dir=out,
    )
    preds = pq.read_table(out / "predictions.parquet").to_pydict()
    p, y = np.asarray(preds["p_yes"]), np.asarray(preds["label"])
    assert ((p > 0) & (p < 1)).all()
    np.testing.assert_allclose(result["auc"], auc(y, p))
    np.testing.assert_allclose(result["log_loss"], log_loss(y, p))
    # The adapter changes P(Yes): base-model scores differ.
    base = evaluate(
        EvalConfig(batch_size=8, max_length=128),
        model=eval_model_dir,
        adapter_path=None,
        test_samples=eval_data["ctr"],
        items=None,
        out_dir=tmp_path / "base",
    )
    assert base["log_loss"] != result["log_loss"]


def test_seqrec_without_negatives_is_rejected(tmp_path, eval_model_dir, eval_data):
    table = pq.read_table(eval_data["seqrec"])
    import pyarrow as pa

    empty = pa.array([[]] * table.num_rows, pa.list_(pa.string()))
    table = table.set_column(table.schema.get_field_index("negatives"), "negatives", empty)
    with pytest.raises(ValueError, match="negatives"):
        evaluate(
            EvalConfig(),
            model=eval_model_dir,
            adapter_path=None,
            test_samples=table,
            items=eval_data["items"],
            out_dir=tmp_path / "e",
        )
    assert not (tmp_path / "e").exists()


def test_evaluate_cli_writes_metrics(tmp_path, eval_data, eval_model_dir, capsys):
    from goracs_ray.cli import main

    cfg = tmp_path / "run.yaml"
    # a whole run YAML: the command reads its `eval:` section
    cfg.write_text("data:\n  max_users: 5\neval:\n  batch_size: 4\n  max_length: 128\n")
    rc = main(
        [
            "evaluate",
            "--model",
            str(eval_model_dir),
            "--test",
            str(eval_data["ctr"]),
            "--out",
            str(tmp_path / "o"),
            "--config",
            str(cfg),
            "--set",
            "max_samples=5",
        ]
    )
    assert rc == 0
    metrics = read_json(tmp_path / "o" / "metrics.json")
    assert metrics["n"] == 5
    assert '"auc"' in capsys.readouterr().out

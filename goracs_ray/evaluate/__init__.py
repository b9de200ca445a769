"""Test-set evaluation: grounded NDCG/HR@K (SeqRec, BIGRec) and AUC/log-loss (CTR, TALLRec)."""

from goracs_ray.evaluate.config import EvalConfig
from goracs_ray.evaluate.metrics import (
    auc,
    hit_rate_at_k,
    log_loss,
    ndcg_at_k,
    rank_of_target,
    ranking_metrics,
)
from goracs_ray.evaluate.run import evaluate

__all__ = [
    "EvalConfig",
    "auc",
    "evaluate",
    "hit_rate_at_k",
    "log_loss",
    "ndcg_at_k",
    "rank_of_target",
    "ranking_metrics",
]

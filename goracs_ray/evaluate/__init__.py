"""Test-set evaluation: NDCG/HR@K (SeqRec) by likelihood and by BIGRec grounding; AUC/log-loss
(CTR, TALLRec)."""

from goracs_ray.evaluate.config import EvalConfig, SeqRecRanking
from goracs_ray.evaluate.likelihood import candidate_scores
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
    "SeqRecRanking",
    "auc",
    "candidate_scores",
    "evaluate",
    "hit_rate_at_k",
    "log_loss",
    "ndcg_at_k",
    "rank_of_target",
    "ranking_metrics",
]

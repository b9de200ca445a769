"""goracs_ray.features: per-sample embeddings, LoRA gradient norms and projections on Ray."""

from goracs_ray.features.actors import FeaturesResult, compute_features
from goracs_ray.features.config import DEFAULT_TINY, Engine, FeaturesConfig, TinyModelConfig
from goracs_ray.features.embed import EmbeddingKind, SentenceEncoder
from goracs_ray.features.grads import GradMethod, PerSampleGrads, per_sample_grads
from goracs_ray.features.projection import GradProjector, ProjectionKind

__all__ = [
    "DEFAULT_TINY",
    "EmbeddingKind",
    "Engine",
    "FeaturesConfig",
    "FeaturesResult",
    "GradMethod",
    "GradProjector",
    "PerSampleGrads",
    "ProjectionKind",
    "SentenceEncoder",
    "TinyModelConfig",
    "compute_features",
    "per_sample_grads",
]

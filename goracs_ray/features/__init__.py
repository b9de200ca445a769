"""goracs_ray.features: per-sample embeddings, LoRA gradient norms and projections on Ray."""

from goracs_ray.features.actors import FeaturesResult, compute_features
from goracs_ray.features.config import FeaturesConfig
from goracs_ray.features.embed import EmbeddingKind, SentenceEncoder
from goracs_ray.features.grads import GradMethod, PerSampleGrads, per_sample_grads
from goracs_ray.features.projection import GradProjector, ProjectionKind

__all__ = [
    "EmbeddingKind",
    "FeaturesConfig",
    "FeaturesResult",
    "GradMethod",
    "GradProjector",
    "PerSampleGrads",
    "ProjectionKind",
    "SentenceEncoder",
    "compute_features",
    "per_sample_grads",
]

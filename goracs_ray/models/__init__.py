"""goracs_ray.models."""

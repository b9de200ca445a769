"""goracs_ray.features."""

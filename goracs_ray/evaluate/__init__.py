"""goracs_ray.evaluate."""

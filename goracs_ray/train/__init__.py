"""goracs_ray.train."""

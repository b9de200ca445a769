"""goracs_ray."""

"""goracs_ray."""

from goracs_ray.select import select_coreset

__all__ = ["select_coreset"]

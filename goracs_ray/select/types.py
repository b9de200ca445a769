"""Inputs and outputs shared by every selection method (GORACS and the baselines).

A method sees one :class:`FeatureTable` (the training pool and the validation set) and returns one
:class:`Selection`. Arrays are validated once, here, so each method can trust its inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["FeatureTable", "Selection"]


def _check_finite(name: str, arr: np.ndarray) -> None:
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"`{name}` must be numeric, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise ValueError(
            f"`{name}` has {int(bad.sum())} NaN/inf value(s) (first at index {first}); "
            "clean or recompute these features before selection"
        )


def _check_rows(name: str, arr: np.ndarray | None, n_rows: int, ndim: int) -> None:
    if arr is None:
        return
    if arr.ndim != ndim or arr.shape[0] != n_rows:
        want = f"({n_rows},)" if ndim == 1 else f"({n_rows}, k)"
        raise ValueError(f"`{name}` must have shape {want}, got {arr.shape}")


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureTable:
    """Per-sample features of the training pool (N rows) and the validation set (M rows).

    Attributes
    ----------
    train_ids : (N,) array
        The caller's sample ids (str or int), unique. Selections are reported in this id space.
    train_emb : (N, d) float32
        Training-sample embeddings.
    valid_emb : (M, d) float32
        Validation-sample embeddings (the target distribution).
    grad_norms : (N,) float32, optional
        Per-sample LoRA gradient norms (non-negative).
    train_labels, valid_labels : (N,), (M,) int64, optional
        Class labels for label-enhanced selection (CTR: 1 like / 0 not).
    train_grad_proj, valid_grad_proj : (N, k), (M, k) float32, optional
        Random projections of per-sample gradients (LESS-style methods).
    train_losses : (N,) float32, optional
        Per-sample losses (EL2N-style methods).
    train_groups : dict[str, (N,) array], optional
        Categorical strata per sample, e.g. ``{"user": ..., "item": ...}``.
    """

    train_ids: np.ndarray
    train_emb: np.ndarray
    valid_emb: np.ndarray
    grad_norms: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    valid_labels: np.ndarray | None = None
    train_grad_proj: np.ndarray | None = None
    valid_grad_proj: np.ndarray | None = None
    train_losses: np.ndarray | None = None
    train_groups: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "train_ids", np.asarray(self.train_ids))
        for name in ("train_emb", "valid_emb", "train_grad_proj", "valid_grad_proj"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, np.ascontiguousarray(value, dtype=np.float32))
        for name in ("grad_norms", "train_losses"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, np.asarray(value, dtype=np.float32))
        for name in ("train_labels", "valid_labels"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, np.asarray(value, dtype=np.int64))
        self._validate()

    def _validate(self) -> None:
        n, m = self.n_train, self.n_valid
        if self.train_emb.ndim != 2 or self.valid_emb.ndim != 2:
            raise ValueError(
                f"`train_emb` and `valid_emb` must be 2-D (rows, dim); got shapes "
                f"{self.train_emb.shape} and {self.valid_emb.shape}"
            )
        if n == 0:
            raise ValueError("`train_emb` is empty: the training pool has no samples")
        if m == 0:
            raise ValueError("`valid_emb` is empty: the validation set has no samples")
        if self.train_emb.shape[1] != self.valid_emb.shape[1]:
            raise ValueError(
                f"embedding dims differ: `train_emb` has d={self.train_emb.shape[1]}, "
                f"`valid_emb` has d={self.valid_emb.shape[1]}; embed both with the same encoder"
            )
        if self.train_ids.shape != (n,):
            raise ValueError(f"`train_ids` must have shape ({n},), got {self.train_ids.shape}")
        ids, missing = self.train_ids, np.zeros(0, dtype=np.int64)
        if ids.dtype.kind == "f":
            missing = np.flatnonzero(np.isnan(ids))
        elif ids.dtype.kind == "O":  # None, or NaN (the only value not equal to itself)
            missing = np.flatnonzero([v is None or v != v for v in ids])
        if len(missing):
            raise ValueError(
                f"`train_ids` has {len(missing)} null/NaN id(s) (e.g. at row {missing[0]}); "
                "give every sample an id"
            )
        uniq, counts = np.unique(self.train_ids, return_counts=True)
        if len(uniq) != n:
            dup = uniq[counts > 1][:3].tolist()
            raise ValueError(f"`train_ids` has duplicates (e.g. {dup}); ids must be unique")
        _check_finite("train_emb", self.train_emb)
        _check_finite("valid_emb", self.valid_emb)
        _check_rows("grad_norms", self.grad_norms, n, 1)
        _check_rows("train_losses", self.train_losses, n, 1)
        _check_rows("train_labels", self.train_labels, n, 1)
        _check_rows("valid_labels", self.valid_labels, m, 1)
        _check_rows("train_grad_proj", self.train_grad_proj, n, 2)
        _check_rows("valid_grad_proj", self.valid_grad_proj, m, 2)
        for name in ("grad_norms", "train_losses", "train_grad_proj", "valid_grad_proj"):
            value = getattr(self, name)
            if value is not None:
                _check_finite(name, value)
        if self.grad_norms is not None and (self.grad_norms < 0).any():
            raise ValueError("`grad_norms` must be non-negative (they are L2 norms)")
        if (self.train_labels is None) != (self.valid_labels is None):
            raise ValueError("give both `train_labels` and `valid_labels`, or neither")
        for key, value in (self.train_groups or {}).items():
            _check_rows(f"train_groups[{key!r}]", np.asarray(value), n, 1)

    @property
    def n_train(self) -> int:
        """N, the number of training samples."""
        return int(self.train_emb.shape[0])

    @property
    def n_valid(self) -> int:
        """M, the number of validation samples."""
        return int(self.valid_emb.shape[0])

    def head(self, n_train: int, n_valid: int) -> FeatureTable:
        """The first ``n_train`` training and ``n_valid`` validation rows (for dry runs)."""
        rows, cols = slice(0, n_train), slice(0, n_valid)
        pick = {
            "train_ids": rows, "train_emb": rows, "grad_norms": rows, "train_labels": rows,
            "train_grad_proj": rows, "train_losses": rows,
            "valid_emb": cols, "valid_labels": cols, "valid_grad_proj": cols,
        }  # fmt: skip
        fields = {
            k: None if getattr(self, k) is None else getattr(self, k)[v] for k, v in pick.items()
        }
        groups = {k: np.asarray(v)[rows] for k, v in (self.train_groups or {}).items()}
        return FeatureTable(**fields, train_groups=groups or None)

    def require(self, *names: str, method: str) -> None:
        """Raise ValueError if any optional feature ``names`` is missing for ``method``."""
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"method `{method}` needs {', '.join(f'`{m}`' for m in missing)}; compute them "
                "with `goracs features` (or pass them to FeatureTable)"
            )


@dataclasses.dataclass(frozen=True, eq=False)
class Selection:
    """A chosen coreset.

    Attributes
    ----------
    indices : (n,) int64
        Row indices into the training pool, in selection order.
    ids : (n,) array
        The same samples in the caller's id space (``FeatureTable.train_ids[indices]``).
    method : str
        Registry name of the method that chose them.
    classes : (n,) int64, optional
        Class of each selected sample (label-enhanced selection), else None.
    info : dict
        Method-specific, JSON-serialisable trace: objective per step, timings, settings.
    """

    indices: np.ndarray
    ids: np.ndarray
    method: str
    classes: np.ndarray | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int:
        """n, the number of selected samples."""
        return int(self.indices.shape[0])

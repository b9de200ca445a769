"""The hot kernels of the POO cost rows and the candidate screening, in numpy or torch.

Every function takes numpy arrays and a ``device`` string and returns numpy arrays:

* ``"cpu"`` (default): the numpy code of :mod:`goracs_ray.select.cost` and the shard screening;
  torch is not imported;
* ``"cuda"``, ``"cuda:N"``: torch on that GPU;
* ``"torch-cpu"``: the same torch code on CPU tensors (tests and the GPU check's ``--quick``
  run exercise the torch path on machines without a GPU);
* ``"auto"`` is resolved once by :func:`resolve_device` before any work.

Exactness: distances are accumulated in float64 on every device, then stored as float32. Only
the float64 product ``x·y`` and the squared norms may sum in another order, so a distance can
differ from numpy's by one float32 rounding step (rows agree within 1e-6 absolute, tested). The
normalisation (IEEE float64 arithmetic, division by a device tensor rather than by a scalar, which
torch's CUDA kernel would turn into a multiplication by the reciprocal), the float32 casts and the
screening minima are exact operations, so they equal numpy's bit for bit given the same input.

Torch is imported inside the functions: ``goracs select`` with ``device: cpu`` never loads it
(several hundred MB of RSS).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from typing import TYPE_CHECKING

import numpy as np

from goracs_ray.select import cost
from goracs_ray.select.cost import CostScales

if TYPE_CHECKING:  # torch is imported where used
    import torch

__all__ = [
    "TORCH_CPU",
    "check_device",
    "cost_block",
    "distance_block",
    "group_minima",
    "normalize_block",
    "reduced_min",
    "resolve_device",
]

logger = logging.getLogger(__name__)

TORCH_CPU = "torch-cpu"
"""The torch path on CPU tensors (tests; not faster than numpy)."""

_DEVICE = re.compile(r"^(cpu|auto|torch-cpu|cuda(:\d+)?)$")
_FIX = (
    "run on a machine with an NVIDIA GPU and a CUDA build of torch "
    "(https://pytorch.org/get-started/locally/), or set `select.device: cpu` "
    "(`goracs select --device cpu`), or `auto` to use a GPU only when one is present"
)


def check_device(device: str) -> str:
    """``device`` itself when it is one of the accepted spellings (no torch import).

    Raises
    ------
    ValueError
        Naming ``select.device`` and the accepted values.
    """
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ValueError(
            f"`select.device` must be cpu, cuda, cuda:N, auto (or {TORCH_CPU} for tests), "
            f"got {device!r}"
        )
    return device


def resolve_device(device: str) -> str:
    """The device a selection runs on: ``auto`` resolved, CUDA checked to be usable.

    ``auto`` is ``cuda`` when torch is installed and ``torch.cuda.is_available()``, else
    ``cpu``. ``cpu`` returns at once without importing torch.

    Raises
    ------
    ValueError
        When torch or the requested GPU is missing (what is missing, and how to fix it).
    """
    device = check_device(device)
    if device == "cpu":
        return device
    installed = importlib.util.find_spec("torch") is not None
    if device == "auto":
        resolved = "cuda" if installed and _torch().cuda.is_available() else "cpu"
        logger.info("select.device auto: cost rows and screening on %s", resolved)
        return resolved
    if not installed:
        raise ValueError(f"`select.device` is {device!r} but torch is not installed; {_FIX}")
    torch = _torch()
    if device == TORCH_CPU:
        return device
    if not torch.cuda.is_available():
        raise ValueError(
            f"`select.device` is {device!r} but CUDA is not available to torch "
            f"{torch.__version__} (torch.cuda.is_available() is False); {_FIX}"
        )
    count = torch.cuda.device_count()
    if int(device.partition(":")[2] or 0) >= count:
        raise ValueError(
            f"`select.device` is {device!r} but torch sees {count} GPU(s); "
            f"use `cuda` or cuda:0 to cuda:{count - 1}"
        )
    return device


def _torch():
    import torch

    return torch


def _target(device: str) -> str:
    return "cpu" if device == TORCH_CPU else device


def _tensor(array: np.ndarray, device: str) -> torch.Tensor:
    """``array`` on the torch device of ``device`` (same dtype)."""
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # torch.from_numpy needs a writable buffer
        array = array.copy()
    return _torch().from_numpy(array).to(_target(device))


def _distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(b, M) float32 distances of float32 rows ``x`` (b, d) and ``y`` (M, d), in float64."""
    x, y = x.double(), y.double()
    sq = (x * x).sum(dim=1)[:, None] + (y * y).sum(dim=1)[None, :]
    sq -= 2.0 * (x @ y.T)
    return sq.clamp_(min=0.0).sqrt_().float()


def _normalize(
    dist: torch.Tensor, grad_block: np.ndarray | None, scales: CostScales, device: str
) -> torch.Tensor:
    """(b, M) float32 POO costs of float32 distances ``dist``, as :func:`cost.normalize_block`."""
    torch = _torch()
    shift, span = cost.normalize_terms(grad_block, scales, dist.shape[0])
    dist_max, span = (
        torch.tensor(value, dtype=torch.float64, device=_target(device))
        for value in (scales.dist_max, span)
    )  # device tensors, not scalars: CUDA divides by a scalar as a multiplication
    return ((dist.double() / dist_max - _tensor(shift, device)[:, None]) / span).float()


def distance_block(train_block: np.ndarray, valid_emb: np.ndarray, *, device: str) -> np.ndarray:
    """:func:`goracs_ray.select.cost.distance_block` on ``device``.

    Parameters
    ----------
    train_block : (b, d) float32
    valid_emb : (M, d) float32
    device : str

    Returns
    -------
    (b, M) float32
        ``||e_i - e_j||`` (float64 accumulation). Memory on the device: (b + M)·d·12 + b·M·12
        bytes.
    """
    if device == "cpu":
        return cost.distance_block(train_block, valid_emb)
    return _distances(_tensor(train_block, device), _tensor(valid_emb, device)).cpu().numpy()


def normalize_block(
    dist_block: np.ndarray, grad_block: np.ndarray | None, scales: CostScales, *, device: str
) -> np.ndarray:
    """:func:`goracs_ray.select.cost.normalize_block` on ``device`` (in place, bit-identical).

    Parameters
    ----------
    dist_block : (b, M) float32
        Raw distances; overwritten with the costs.
    grad_block : (b,) float32 or None
    scales : CostScales
    device : str

    Returns
    -------
    (b, M) float32
        ``dist_block`` itself.
    """
    if device == "cpu":
        return cost.normalize_block(dist_block, grad_block, scales)
    dist_block[...] = _normalize(_tensor(dist_block, device), grad_block, scales, device).cpu()
    return dist_block


def cost_block(
    train_block: np.ndarray,
    valid_emb: np.ndarray,
    grad_block: np.ndarray | None,
    scales: CostScales,
    *,
    device: str,
    valid_sq: np.ndarray | None = None,
) -> np.ndarray:
    """POO cost rows from embeddings: :func:`distance_block` then :func:`normalize_block`.

    On a torch device the distances stay there between the two steps (one transfer back).

    Parameters
    ----------
    train_block : (b, d) float32
    valid_emb : (M, d) float32
    grad_block : (b,) float32 or None
    scales : CostScales
    device : str
    valid_sq : (M,) float64, optional
        CPU: ``|y|²`` of ``valid_emb`` kept by the caller (:func:`cost.distance_block`).

    Returns
    -------
    (b, M) float32
    """
    if device == "cpu":
        dist = cost.distance_block(train_block, valid_emb, valid_sq=valid_sq)
        return cost.normalize_block(dist, grad_block, scales)
    dist = _distances(_tensor(train_block, device), _tensor(valid_emb, device))
    return _normalize(dist, grad_block, scales, device).cpu().numpy()


def group_minima(
    block: np.ndarray, col_order: np.ndarray, group_starts: np.ndarray, *, device: str
) -> np.ndarray:
    """Per-row minima over column groups (the coarse screening bound's precomputation).

    Parameters
    ----------
    block : (b, M) float32
        Cost rows.
    col_order : (M,) int64
        Columns sorted by group (:func:`goracs_ray.select.sharded.column_groups`).
    group_starts : (G,) int64
        Start of each group in ``col_order``, strictly increasing.
    device : str

    Returns
    -------
    (b, G) float32
        ``min_{j∈g} c_kj`` (``np.minimum.reduceat`` on cpu; exact on every device).
    """
    if device == "cpu":
        return np.minimum.reduceat(block[:, col_order], group_starts, axis=1)
    ordered = _tensor(block, device)[:, _tensor(col_order, device)]
    sizes = np.diff(np.append(group_starts, len(col_order))).tolist()
    parts = ordered[:, group_starts[0] :].split(sizes, dim=1)
    return _torch().stack([p.amin(dim=1) for p in parts], dim=1).cpu().numpy()


def reduced_min(values: np.ndarray, offsets: np.ndarray, *, device: str) -> np.ndarray:
    """``min_j (values_kj - offsets_j)``: the screening lower bounds before the 1/n scaling.

    Parameters
    ----------
    values : (k, m) float32
        Cost rows (m = M) or their group minima (m = G).
    offsets : (m,) float32 or float64
        Column duals ``f`` (or their group maxima).
    device : str

    Returns
    -------
    (k,) float32 or float64
        In the promoted dtype of the two inputs, as numpy's ``(values - offsets).min(axis=1)``
        (exact on every device).
    """
    if device == "cpu":
        return (values - offsets).min(axis=1)
    return (_tensor(values, device) - _tensor(offsets, device)).amin(dim=1).cpu().numpy()

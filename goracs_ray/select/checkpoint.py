"""Selection checkpoints: the greedy result and the refinement state, written atomically.

A :class:`Checkpoint` is one ``.npz`` file per ITRA run (one per class). It is rewritten after
the greedy stage and after every accepted exchange — to ``<file>.tmp``, then ``os.replace`` — and
carries a settings key (options, budget, cost settings and a hash of the inputs); a file whose
key differs is ignored, so a resumed run never mixes settings. Resuming restores the members (in
the driver's order), the exact OT solution whose duals drive the next refresh, the POO trace and
the swap list, so the rest of the run is the uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np

from goracs_ray.select.greedy import GreedyResult
from goracs_ray.select.ot import OTSolution
from goracs_ray.select.refine import RefineState

__all__ = ["Checkpoint", "input_digest"]

logger = logging.getLogger(__name__)

PAUSE_ENV = "GORACS_SELECT_PAUSE_AFTER_SWAPS"
"""Test hook: after checkpointing this many swaps, sleep (so a test can SIGKILL the process)."""


def input_digest(*arrays: np.ndarray | None) -> str:
    """Hash of the arrays' shapes, dtypes and bytes (O(total size), no copy)."""
    h = hashlib.blake2b(digest_size=16)
    for arr in arrays:
        if arr is None:
            h.update(b"none")
            continue
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.shape}{arr.dtype}".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


class Checkpoint:
    """The checkpoint file of one ITRA run.

    Parameters
    ----------
    path : Path
        The ``.npz`` file (its folder is created on the first write).
    key : str
        Settings key; a file with another key is not resumed from.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = Path(path), key
        self._greedy: GreedyResult | None = None
        self._data = self._read()
        self.after_save = None  # test hook of the distributed selector (a fault plan)

    def _read(self) -> dict[str, np.ndarray] | None:
        if not self.path.exists():
            return None
        with np.load(self.path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        if str(data.get("key")) != self.key:
            logger.warning("checkpoint %s has other settings; starting afresh", self.path)
            return None
        return data

    def _write(self, arrays: dict[str, np.ndarray]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(self.key), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _greedy_arrays(self) -> dict[str, np.ndarray]:
        g = self._greedy
        return {
            "g_indices": g.indices, "g_order": g.order,
            "g_ints": np.array([g.n_added, g.n_zero_gain, g.n_gain_evals, int(g.trimmed)]),
        }  # fmt: skip

    def load_greedy(self) -> GreedyResult | None:
        """The checkpointed greedy result, or None."""
        d = self._data
        if d is None:
            return None
        ints = d["g_ints"].tolist()
        self._greedy = GreedyResult(
            indices=d["g_indices"], order=d["g_order"], n_added=ints[0], n_zero_gain=ints[1],
            n_gain_evals=ints[2], trimmed=bool(ints[3]),
        )  # fmt: skip
        logger.info("resuming from %s (greedy done)", self.path)
        return self._greedy

    def save_greedy(self, greedy: GreedyResult) -> None:
        """Checkpoint the greedy stage (drops any refinement state)."""
        self._greedy = greedy
        self._write(self._greedy_arrays())

    def load_refine(self) -> RefineState | None:
        """The checkpointed refinement state, or None."""
        d = self._data
        if d is None or "members" not in d:
            return None
        logger.info("resuming refinement after %d swaps", len(d["swaps"]))
        return RefineState(
            members=d["members"].astype(np.int64),
            solution=OTSolution(float(d["value"]), d["u"], d["v"], str(d["status"])),
            trace=d["trace"].tolist(),
            seconds=d["seconds"].tolist(),
            swaps=[tuple(p) for p in d["swaps"].reshape(-1, 2).tolist()],
            n_tried=int(d["n_tried"]),
        )

    def save_refine(self, state: RefineState) -> None:
        """Checkpoint the refinement state (after the first solve and every accepted swap)."""
        sol = state.solution
        self._write(
            {
                **self._greedy_arrays(), "members": state.members, "u": sol.u, "v": sol.v,
                "value": np.array(sol.value), "status": np.array(sol.status),
                "trace": np.asarray(state.trace), "seconds": np.asarray(state.seconds),
                "swaps": np.asarray(state.swaps, dtype=np.int64).reshape(-1, 2),
                "n_tried": np.array(state.n_tried),
            }
        )  # fmt: skip
        if self.after_save is not None:
            self.after_save()
        pause = os.environ.get(PAUSE_ENV)
        if pause is not None and len(state.swaps) == int(pause):
            logger.warning("%s=%s: pausing (test hook)", PAUSE_ENV, pause)
            time.sleep(3600)

"""Resume: a `goracs select` killed mid-refinement finishes with the uninterrupted coreset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from goracs_ray.cli import main
from goracs_ray.io import read_json
from goracs_ray.select.checkpoint import PAUSE_ENV
from goracs_ray.select.output import checkpoint_dir_for


def _inputs(tmp_path):
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 8)) * 3
    train = centers[rng.integers(0, 4, 300)] + rng.normal(size=(300, 8))
    valid = centers[rng.integers(0, 4, 60)] + rng.normal(size=(60, 8))
    np.save(tmp_path / "train.npy", train.astype(np.float32))
    np.save(tmp_path / "valid.npy", valid.astype(np.float32))
    np.save(tmp_path / "g.npy", rng.lognormal(size=300).astype(np.float32))


def _argv(tmp_path, out):
    return [
        "select", "--train", str(tmp_path / "train.npy"), "--valid", str(tmp_path / "valid.npy"),
        "--grad-norms", str(tmp_path / "g.npy"), "--budget", "15", "--lam", "0.5",
        "--max-iters", "6", "--cut-num", "8", "--out", str(out),
    ]  # fmt: skip


def _swaps_checkpointed(ckpt) -> int:
    try:
        with np.load(ckpt / "part-all.npz") as z:
            return len(z["swaps"]) if "swaps" in z.files else -1
    except (OSError, ValueError, KeyError):
        return -1


def test_sigkilled_select_resumes_to_the_uninterrupted_result(tmp_path, caplog):
    _inputs(tmp_path)
    assert main(_argv(tmp_path, tmp_path / "plain")) == 0
    plain = read_json(tmp_path / "plain" / "selection_trace.json")["info"]["parts"][0]
    assert len(plain["poo_trace"]) >= 4  # at least 3 swaps, so killing after 2 is mid-way
    assert not checkpoint_dir_for(tmp_path / "plain").exists()  # removed once written

    out = tmp_path / "killed"
    ckpt = checkpoint_dir_for(out)
    code = "import sys\nfrom goracs_ray.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, PAUSE_ENV: "2"}
    proc = subprocess.Popen([sys.executable, "-c", code, *_argv(tmp_path, out)], env=env)
    try:
        deadline = time.monotonic() + 300
        while _swaps_checkpointed(ckpt) < 2:
            assert proc.poll() is None, "select exited before the checkpoint of swap 2"
            assert time.monotonic() < deadline, "no checkpoint after 2 swaps"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    with caplog.at_level("INFO"):
        assert main(_argv(tmp_path, out)) == 0
    assert "resuming refinement after 2 swaps" in caplog.text
    resumed = read_json(out / "selection_trace.json")["info"]["parts"][0]
    assert resumed["poo_trace"] == plain["poo_trace"]
    assert resumed["n_pairs_tried"] == plain["n_pairs_tried"]
    import pyarrow.parquet as pq

    assert (
        pq.read_table(out / "coreset.parquet").to_pydict()
        == pq.read_table(tmp_path / "plain" / "coreset.parquet").to_pydict()
    )
    assert not ckpt.exists()

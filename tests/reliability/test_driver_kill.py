"""Driver faults: `goracs run` SIGKILLed (its whole process group) in each stage, then rerun.

One uninterrupted run of the tiny run config (one arm, ``goracs``) is the reference. Each test
copies the reference's finished stages, except the one under test and what it must rebuild, into
a fresh run dir (cached by content: the rerun skips them), starts `goracs run` in its own session,
waits until the driver is inside the stage under test (a file or log line that stage alone
makes; in select and finetune, which are quick here, the stage's pause test hook holds it there;
never a sleep), SIGKILLs the driver's process group, checks that the stage was left unfinished
and that none of that run's Ray processes survive, and reruns the same command, which must
finish with the reference's coreset (ids, in order) and metrics.

Killed in features or select, the rerun rebuilds features (resumed) and select; fine-tuning and
evaluation stay the reference's (copied), which is sound because the only thing they read of
the selection, ``coreset_samples.parquet``, is asserted equal to the reference's. That saves two
fine-tunings (Ray Data and Ray Train start-up, over a minute each on 2 cores). Killed in finetune
or evaluate, the rerun rebuilds them and the metrics are compared.

What each kill leaves behind for the rerun:

- features: finished shards (``part-*.parquet``) and ``.features.pending.json``; resumed.
- select: ``select/goracs.checkpoint`` (2 swaps; resumed) and a ``select/goracs.part`` dir.
- finetune: the Ray Train run under ``ray_train/`` with epoch 0's checkpoint; resumed at epoch 1.
- evaluate: an ``evaluate/goracs.part`` dir (discarded).

Each `goracs run` gets its own ``RAY_TMPDIR``: it starts its own local Ray (never joining the test
session's Ray or another one found through ``/tmp/ray``), and its processes can be told apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from goracs_ray.io import read_json
from goracs_ray.select.checkpoint import PAUSE_ENV as SELECT_PAUSE_ENV
from goracs_ray.train.worker import PAUSE_ENV as TRAIN_PAUSE_ENV

REPO = Path(__file__).resolve().parents[2]
ARM = "goracs"
# Every stage of the run, in order (its name is its dir under the run dir).
STAGES = ["prepare", "model", "features", f"select/{ARM}", f"finetune/{ARM}", f"evaluate/{ARM}"]


def _config(root: Path, run_dir: Path, make_toy_run_config) -> Path:
    """The tiny run config with one arm, 4 feature shards (a kill can land between two) and 2
    epochs (a kill can land after epoch 0's checkpoint); only ``run_dir`` differs between runs."""
    cfg = make_toy_run_config(root)
    cfg["run_dir"] = str(run_dir)
    cfg["compare"] = []
    cfg["features"]["rows_per_shard"] = 32  # 96 train + 12 valid rows
    cfg["train"]["epochs"] = 2
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Driver:
    """`goracs run <config>` in a new session (process group = its pid), output in a log file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        # Short: Ray's socket paths under it have a length limit.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="gdk", dir="/tmp"))
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "RAY_TMPDIR": str(self.ray_tmp),
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            **(env or {}),
        }
        env.pop("RAY_ADDRESS", None)
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "goracs_ray.cli", "run", str(config)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.sid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, reached: Callable[[], bool], what: str, timeout: float = 600) -> None:
        """Poll ``reached`` every 20 ms; fail if the driver exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while not reached():
            if self.proc.poll() is not None:
                pytest.fail(f"driver exited ({self.proc.returncode}) before {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the driver's process group (the driver, GCS, raylet, agents), as a job
        scheduler or a closed terminal would; Ray's workers (own process groups) must follow."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait(timeout=60)
        assert rc == -signal.SIGKILL, f"the driver ended by itself ({rc}) before the kill"

    def finish(self, timeout: float = 900) -> None:
        rc = self.proc.wait(timeout=timeout)
        assert rc == 0, self.tail()

    def survivors(self) -> list[psutil.Process]:
        """Live (not zombie) processes of this run: in its session or naming its Ray temp dir."""
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                cmd = " ".join(proc.info["cmdline"] or [])
                if os.getsid(proc.pid) == self.sid or str(self.ray_tmp) in cmd:
                    found.append(proc)
        return found

    def assert_no_survivors(self, timeout: float = 60) -> None:
        """Every process of the run is gone within ``timeout`` (killed, or exited when its raylet
        died); any left are killed and reported."""
        deadline = time.monotonic() + timeout
        while (left := self.survivors()) and time.monotonic() < deadline:
            time.sleep(0.5)
        described = []
        for proc in left:
            with contextlib.suppress(psutil.Error):
                described.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
                proc.kill()
        assert not described, "processes of the killed run survived:\n" + "\n".join(described)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for proc in self.survivors():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]


def _run(config: Path, log: Path) -> None:
    driver = Driver(config, log)
    try:
        driver.finish()
    finally:
        driver.cleanup()


def _coreset(run_dir: Path) -> list[str]:
    return pq.read_table(run_dir / "select" / ARM / "coreset.parquet")["sample_id"].to_pylist()


def _metrics(run_dir: Path) -> dict:
    metrics = read_json(run_dir / "evaluate" / ARM / "metrics.json")
    metrics.pop("seconds")
    return metrics


@pytest.fixture(scope="module")
def reference(tmp_path_factory, make_toy_run_config) -> dict:
    """The uninterrupted run: its run dir, coreset and metrics."""
    root = tmp_path_factory.mktemp("driver_kill")
    run_dir = root / "reference"
    _run(_config(root, run_dir, make_toy_run_config), root / "reference.log")
    return {
        "root": root,
        "run_dir": run_dir,
        "coreset": _coreset(run_dir),
        "metrics": _metrics(run_dir),
        "train": read_json(run_dir / "finetune" / ARM / "train_metrics.json")["epochs"],
        "log": (root / "reference.log").read_text(errors="replace"),
    }


# Lines of Ray, Ray Data and Ray Train that a default `goracs run` must not print (issue 17).
NOISE = [
    "Execution plan of Dataset",  # Ray Data plans (console at WARNING under the CLI)
    "Progress bars disabled",  # Ray's advice about bars goracs_ray turned off on purpose
    "Reporting training result",  # Ray Train's per-report line (run's log level: WARNING)
    "Token authentication is enabled",  # Ray's notice of its own default (made explicit)
    "exclude_resources",  # Ray Train's use of a deprecated Ray Data option
    "Traceback",
]


def test_a_default_run_log_is_goracs_lines_and_warnings_that_matter(reference):
    """The uninterrupted reference run (one arm, two epochs) at the default log level."""
    lines = reference["log"].splitlines()
    for noise in NOISE:
        assert not [line for line in lines if noise in line], noise
    assert any("goracs_ray.stages: stage features: running" in line for line in lines)
    assert any("epoch 1: train loss" in line for line in lines)  # the worker's own lines stay
    assert len(lines) <= 40, "\n".join(lines)


def _kill_and_rerun(
    reference: dict,
    make_toy_run_config,
    stage: str,
    reached: Callable[[Path, Driver], bool],
    what: str,
    *,
    env: dict[str, str] | None = None,
    rebuilt: int = 0,
) -> tuple[Path, Driver]:
    """Copy every stage but ``stage`` and the ``rebuilt`` after it from the reference; run,
    SIGKILL once ``reached``, check, rerun, compare with the reference. ``env``: extra environment
    of the killed run only. Returns the run dir and the rerun's driver."""
    root, first = reference["root"], STAGES.index(stage)
    rebuilt_stages = STAGES[first : first + 1 + rebuilt]
    run_dir = root / f"killed_{stage.split('/')[0]}"
    for name in STAGES:
        if name not in rebuilt_stages:
            shutil.copytree(reference["run_dir"] / name, run_dir / name)
    config = _config(root, run_dir, make_toy_run_config)

    killed = Driver(config, run_dir.with_suffix(".killed.log"), env)
    try:
        killed.wait_until(lambda: reached(run_dir, killed), what)
        killed.kill()
        killed.assert_no_survivors()
    finally:
        killed.cleanup()
    assert not (run_dir / stage / "_stage.json").exists(), f"{stage} finished before the kill"

    rerun = Driver(config, run_dir.with_suffix(".rerun.log"))
    try:
        rerun.finish()
    finally:
        rerun.cleanup()
    records = read_json(run_dir / "manifest.json")["stages"]
    assert [r["name"] for r in records] == STAGES
    # The copied stages are reused; the killed one (and the rebuilt ones after it) are rebuilt.
    assert [r["cached"] for r in records] == [name not in rebuilt_stages for name in STAGES]
    assert _coreset(run_dir) == reference["coreset"]
    if f"select/{ARM}" in rebuilt_stages:
        # What fine-tuning reads of the selection: equal, so the reference's finetune and
        # evaluate outputs (copied, and cached by key) are what the rerun would rebuild.
        samples = f"select/{ARM}/coreset_samples.parquet"
        assert pq.read_table(run_dir / samples) == pq.read_table(reference["run_dir"] / samples)
    else:
        assert _metrics(run_dir) == reference["metrics"]
    return run_dir, rerun


_SNAPSHOT = "checkpoint_manager_snapshot.json"


def _checkpoints(run_dir: Path) -> set[Path]:
    return {p for p in (run_dir / "ray_train").glob("finetune-*/checkpoint_*") if p.is_dir()}


def _logged(text: str) -> Callable[[Path, Driver], bool]:
    return lambda _run_dir, driver: text in driver.output()


def test_driver_killed_in_features_resumes_its_shards(reference, make_toy_run_config):
    def first_shard(run_dir: Path, _driver) -> bool:
        return any((run_dir / "features").glob("part-*.parquet"))

    _, rerun = _kill_and_rerun(
        reference, make_toy_run_config, "features", first_shard, "first features shard", rebuilt=1
    )
    assert "resuming: " in rerun.output()  # "resuming: k of 4 shards already done"


def test_driver_killed_in_select_resumes_from_its_checkpoint(reference, make_toy_run_config):
    """The killed run pauses after checkpointing 2 swaps (the selection's test hook), so the kill
    lands mid-refinement; the rerun resumes there and ends with the reference's coreset."""
    selection = read_json(reference["run_dir"] / "select" / ARM / "selection_trace.json")
    assert len(selection["info"]["parts"][0]["poo_trace"]) >= 4  # greedy, then ≥ 3 swaps
    _, rerun = _kill_and_rerun(
        reference,
        make_toy_run_config,
        f"select/{ARM}",
        _logged(f"{SELECT_PAUSE_ENV}=2: pausing (test hook)"),
        "checkpoint of 2 swaps",
        env={SELECT_PAUSE_ENV: "2"},
    )
    assert "resuming refinement after 2 swaps" in rerun.output()


def test_driver_killed_in_finetune_resumes_from_the_epoch_checkpoint(
    reference, make_toy_run_config
):
    """The killed run's workers pause once epoch 0's checkpoint is committed (the training test
    hook; an epoch takes well under a second here), so the kill lands between the two epochs.
    The rerun's Ray Train run (same name, same storage) resumes from that checkpoint, trains
    epoch 1 only and ends where the reference ended."""
    before: set[Path] = set()

    def epoch0_committed(run_dir: Path, _driver) -> bool:
        # Ray Train rewrites the snapshot (not atomically) whenever it registers a checkpoint.
        snapshots = list((run_dir / "ray_train").glob("finetune-*/" + _SNAPSHOT))
        try:
            latest = json.loads(snapshots[0].read_text())["latest_checkpoint_result"]
        except (IndexError, ValueError, KeyError, TypeError):
            return False
        if latest is None:
            return False
        assert latest["metrics"]["epoch"] == 0  # the workers paused after it
        before.update(_checkpoints(run_dir))
        return True

    run_dir, _ = _kill_and_rerun(
        reference,
        make_toy_run_config,
        f"finetune/{ARM}",
        epoch0_committed,
        "epoch 0 checkpoint",
        env={TRAIN_PAUSE_ENV: "0"},
        rebuilt=1,
    )
    written = _checkpoints(run_dir) - before
    assert len(before) == len(written) == 1, (before, written)  # epoch 0 was not trained again
    assert len(read_json(written.pop() / "state.json")["history"]) == 2
    train = read_json(run_dir / "finetune" / ARM / "train_metrics.json")
    assert train["epochs"] == reference["train"]


def test_driver_killed_in_evaluate_reruns_it(reference, make_toy_run_config):
    running = _logged(f"stage evaluate/{ARM}: running")
    _kill_and_rerun(reference, make_toy_run_config, f"evaluate/{ARM}", running, "evaluation start")

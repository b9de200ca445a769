"""Optional experiment tracking with MLflow: the run YAML's ``tracking:`` section.

Off by default; ``tracking.mlflow_uri`` turns it on (``pip install 'goracs_ray[tracking]'``,
mlflow-skinny, imported only then). Each `goracs run` or `goracs bench` invocation is one MLflow
run (the parent) with one nested run per arm (``goracs``, ``random``, ``goracs/b1024-s0``,
``full_data/s0``):

- parent: the resolved config flattened to dotted params (``select.lam``), tags (command, run
  dir, config hash, git commit, which shared stages were cached), ``seconds_total``, for
  `goracs run` each arm's final metrics as ``<arm>/<metric>``, and the artifacts ``results.md``,
  ``results.parquet``, ``config.yaml``, ``manifest.json`` and the plots;
- arm: its params (method, budget, seed, the method's resolved options), the selection trace
  (``poo``: POO after greedy at step 0, after each accepted swap at steps 1, 2, …; ``poo/<class>``
  per class with label-enhanced CTR selection), the fine-tuning's per-epoch ``train_loss`` and
  ``valid_loss`` (step = epoch), ``best_valid_loss``, ``best_epoch``, the final metrics of
  ``metrics.json`` and the stage times (``seconds/select`` …), tags with each stage's key and
  whether it was cached, and the artifacts ``metrics.json``, ``train_metrics.json`` and
  ``selection_trace.json``.

Everything is logged from the driver, out of the artifacts the stages wrote, once an arm is done:
a cached stage logs exactly what it logged when it ran, so a re-run gives a complete MLflow run
(and nothing has to be installed on the Ray workers). MLflow refuses ``@`` in metric names, so
``ndcg@10`` is logged as ``ndcg_at_10`` (:func:`metric_name`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from goracs_ray.pipeline import Arm
    from goracs_ray.results import ArmResult
    from goracs_ray.stages import StageRecord

__all__ = [
    "INSTALL_HINT",
    "MlflowTracker",
    "NullTracker",
    "TensorBoardTracker",
    "TrackingConfig",
    "arm_record",
    "flat_params",
    "import_mlflow",
    "metric_name",
    "start_tracking",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'goracs_ray[tracking]'"
"""How to get MLflow (the ``[tracking]`` extra: mlflow-skinny)."""

_MAX_PARAMS = 100  # MLflow's limits per log_batch call
_MAX_METRICS = 1000
_MAX_PARAM_VALUE = 6000
_NOT_METRICS = {"n", "seconds", "task", "adapter_path"}
"""``metrics.json`` entries that are not final metrics (``n`` is logged as the param
``n_test``, ``seconds`` as ``seconds/evaluate``)."""


@dataclasses.dataclass
class TrackingConfig:
    """Optional MLflow experiment tracking (``pip install 'goracs_ray[tracking]'``)."""

    mlflow_uri: str | None = None
    """MLflow tracking URI: ``http://host:5000``, ``databricks``, ``file:///abs/path/mlruns`` or a
    local path (MLflow's file store, opted into for you). None: no tracking."""
    experiment: str = "goracs"
    """MLflow experiment of the runs (created when missing)."""
    tensorboard: bool = False
    """Also write TensorBoard event files, one directory per arm under ``<run_dir>/tensorboard``
    (with a URI ``run_dir``: under its staging dir), with the same scalars as the MLflow arm runs
    (``tensorboard --logdir <run_dir>/tensorboard``; needs the ``tensorboard`` package)."""

    def __post_init__(self) -> None:
        uri = self.mlflow_uri
        if uri is not None and (not uri.strip() or uri != uri.strip()):
            raise ValueError(
                f"`tracking.mlflow_uri` must be a non-empty URI without surrounding spaces "
                f"(e.g. `file:///tmp/mlruns`, `http://host:5000`) or null, got {uri!r}"
            )
        if not self.experiment.strip():
            raise ValueError("`tracking.experiment` must be a non-empty MLflow experiment name")

    @property
    def enabled(self) -> bool:
        """Whether runs are tracked (``mlflow_uri`` set or ``tensorboard`` on)."""
        return self.mlflow_uri is not None or self.tensorboard


def import_mlflow():
    """The ``mlflow`` module; a ValueError naming the extra to install when it is missing."""
    try:
        import mlflow
    except ImportError:
        raise ValueError(
            "`tracking.mlflow_uri` is set but MLflow is not installed: "
            f"{INSTALL_HINT}, or set `tracking.mlflow_uri: null`"
        ) from None
    return mlflow


def metric_name(key: str) -> str:
    """``key`` as an MLflow metric or param name: ``@`` → ``_at_`` (``ndcg@10`` →
    ``ndcg_at_10``), any other character MLflow refuses → ``_``."""
    return re.sub(r"[^\w./\- ]", "_", key.replace("@", "_at_"))


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config dict (``to_dict`` of a config) as dotted MLflow params, values as YAML
    scalars: strings as they are, anything else as JSON (``null``, ``0.5``, ``["random"]``)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{metric_name(str(key))}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, prefix=f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:_MAX_PARAM_VALUE]
    return out


def _is_file_store(uri: str) -> bool:
    return uri not in ("databricks", "databricks-uc") and urlparse(uri).scheme in ("", "file")


class NullTracker:
    """Tracking off: every method does nothing (and MLflow is never imported)."""

    run_id: str | None = None

    def log_arm(self, arm: Arm, result: ArmResult, records: Sequence[StageRecord]) -> None:
        """Nothing."""

    def finish(self, run_dir: Path, records: Sequence[StageRecord], seconds: float) -> None:
        """Nothing."""

    @property
    def reference(self) -> dict[str, str] | None:
        """None (no MLflow run)."""
        return None


class MlflowTracker(NullTracker):
    """One MLflow parent run of a `goracs run`/`goracs bench` invocation and a nested run per arm.

    Uses an explicit ``MlflowClient`` (no fluent, process-global active run). Errors after the
    parent run exists are logged as warnings: tracking never fails an experiment that ran.
    """

    def __init__(self, cfg: Any, *, command: str) -> None:
        from goracs_ray.configutil import to_dict
        from goracs_ray.pipeline import config_hash, git_sha

        tracking: TrackingConfig = cfg.tracking
        import_mlflow()
        uri = tracking.mlflow_uri
        assert uri is not None
        if _is_file_store(uri):
            import os

            # MLflow 3.x refuses its file store unless opted into; asking for one is the opt-in.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.command = command
        from goracs_ray.storage import is_uri, local_run_dir

        self.run_dir = local_run_dir(cfg.run_dir, cfg.staging_dir)  # where the artifacts are built
        where = cfg.run_dir if is_uri(cfg.run_dir) else str(self.run_dir)
        self.uri, self.run_id = uri, None
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(tracking.experiment)
            self.experiment_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(tracking.experiment)
            )
            tags = {
                "goracs.command": command,
                "goracs.run_dir": where,
                "goracs.config_hash": config_hash(cfg),
            }
            if (sha := git_sha()) is not None:
                tags["mlflow.source.git.commit"] = sha
            run = self.client.create_run(
                self.experiment_id, run_name=where.rstrip("/").rsplit("/", 1)[-1], tags=tags
            )
            self.run_id = run.info.run_id
            self._log(self.run_id, params=flat_params(to_dict(cfg)))
        except Exception as exc:  # before any stage: a bad URI or an unreachable server
            if self.run_id is not None:
                self.end("FAILED")
            raise ValueError(
                f"tracking: cannot start an MLflow run in experiment {tracking.experiment!r} at "
                f"`{uri}`: {exc}"
            ) from exc
        logger.info(
            "tracking: MLflow run %s in experiment %r at %s",
            self.run_id,
            tracking.experiment,
            uri,
        )

    @property
    def reference(self) -> dict[str, str] | None:
        """Where the parent run is (goes into manifest.json)."""
        return {
            "tracking_uri": self.uri,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
        }

    def _log(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] | None = None,
        metrics: Sequence[tuple[str, float, int]] = (),
        tags: Mapping[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ps = [Param(k, v) for k, v in (params or {}).items()]
        ms = [Metric(k, float(v), now, int(step)) for k, v, step in metrics]
        ts = [RunTag(k, v) for k, v in (tags or {}).items()]
        for i in range(0, len(ps), _MAX_PARAMS):
            self.client.log_batch(run_id, params=ps[i : i + _MAX_PARAMS])
        for i in range(0, len(ts), _MAX_PARAMS):
            self.client.log_batch(run_id, tags=ts[i : i + _MAX_PARAMS])
        for i in range(0, len(ms), _MAX_METRICS):
            self.client.log_batch(run_id, metrics=ms[i : i + _MAX_METRICS])

    def _artifacts(self, run_id: str, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(run_id, str(path))

    def log_arm(self, arm: Arm, result: ArmResult, records: Sequence[StageRecord]) -> None:
        """A nested run for ``arm``: params, POO trace, epoch losses, final metrics, artifacts."""
        try:
            self._log_arm(arm, result, records)
        except Exception:
            logger.warning("tracking: logging arm %s to MLflow failed", arm.path, exc_info=True)

    def _log_arm(self, arm: Arm, result: ArmResult, records: Sequence[StageRecord]) -> None:
        tags = {
            "mlflow.parentRunId": self.run_id,
            "goracs.arm": arm.path,
            "goracs.method": arm.name,
        }
        tags.update(_stage_tags(records, [f"{s}/{arm.path}" for s in _ARM_STAGES]))
        run = self.client.create_run(self.experiment_id, run_name=arm.path, tags=tags)
        params, metrics = arm_record(self.run_dir, arm, result)
        sel_dir, ft_dir, ev_dir = (self.run_dir / s / arm.path for s in _ARM_STAGES)
        self._log(run.info.run_id, params=params, metrics=metrics)
        files = ("metrics.json", "train_metrics.json", "selection_trace.json")
        self._artifacts(run.info.run_id, [d / f for d, f in zip((ev_dir, ft_dir, sel_dir), files)])
        self.client.set_terminated(run.info.run_id)
        if self.command == "run":  # one arm per method: the headline numbers on the parent too
            finals = [(f"{arm.name}/{metric_name(k)}", v, 0) for k, v in result.metrics.items()]
            self._log(self.run_id, metrics=finals)

    def finish(self, run_dir: Path, records: Sequence[StageRecord], seconds: float) -> None:
        """Tags of the shared stages, ``seconds_total`` and the report files; ends the run."""
        try:
            self._log(
                self.run_id,
                metrics=[("seconds_total", seconds, 0)],
                tags=_stage_tags(records, _SHARED_STAGES),
            )
            names = ("results.md", "results.parquet", "config.yaml", "manifest.json", "poo.parquet")
            self._artifacts(
                self.run_id, [run_dir / n for n in names] + sorted(run_dir.glob("*.png"))
            )
        except Exception:
            logger.warning("tracking: logging results to MLflow failed", exc_info=True)

    def end(self, status: str) -> None:
        """Mark the parent run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception:
            logger.warning("tracking: ending MLflow run %s failed", self.run_id, exc_info=True)


def arm_record(
    run_dir: Path, arm: Arm, result: ArmResult
) -> tuple[dict[str, str], list[tuple[str, float, int]]]:
    """What a tracker logs of one finished arm, read from its artifacts: params (method,
    budget, seeds, the method's options, ``n_test``) and ``(name, value, step)`` metrics (the
    POO trace, per-epoch losses, final metrics, stage seconds)."""
    from goracs_ray.io import read_json

    sel_dir, ft_dir, ev_dir = (run_dir / s / arm.path for s in _ARM_STAGES)
    params = {
        "method": arm.name,
        "budget": str(result.budget),
        "seed": str(result.seed),
        "train_seed": str(arm.train_seed),
    }
    if arm.select is not None:
        params["select.method"] = arm.select.method
        params.update(flat_params({"options": arm.select_key.get("options", {})}))
    metrics: list[tuple[str, float, int]] = []
    if (sel_dir / "selection_trace.json").is_file() and arm.select is not None:
        parts = read_json(sel_dir / "selection_trace.json").get("info", {}).get("parts", [])
        for part in parts:
            name = "poo" if len(parts) == 1 else metric_name(f"poo/{part['class']}")
            metrics += [(name, v, k) for k, v in enumerate(part.get("poo_trace", []))]
    train = read_json(ft_dir / "train_metrics.json")
    for epoch in train.get("epochs", []):
        for key in ("train_loss", "valid_loss"):
            metrics.append((key, epoch[key], int(epoch["epoch"])))
    for key in ("best_valid_loss", "best_epoch"):
        if _is_number(train.get(key)):
            metrics.append((key, train[key], 0))
    final = read_json(ev_dir / "metrics.json")
    params["n_test"] = str(final.get("n"))
    for key, value in final.items():
        if key not in _NOT_METRICS and _is_number(value):
            metrics.append((metric_name(key), value, 0))
    metrics += [(f"seconds/{k}", v, 0) for k, v in result.seconds.items()]
    return params, metrics


class TensorBoardTracker(NullTracker):
    """TensorBoard event files: ``<run_dir>/tensorboard/<arm>/`` with each arm's scalars (as
    :func:`arm_record`) and its params as a text summary."""

    def __init__(self, cfg: Any) -> None:
        from goracs_ray.storage import local_run_dir

        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "`tracking.tensorboard` is on but the `tensorboard` package is not installed: "
                f"{INSTALL_HINT} (or `pip install tensorboard`), or set `tracking.tensorboard: "
                "false`"
            ) from None
        self.writer_class = SummaryWriter
        self.run_dir = local_run_dir(cfg.run_dir, cfg.staging_dir)
        self.logdir = self.run_dir / "tensorboard"

    def log_arm(self, arm: Arm, result: ArmResult, records: Sequence[StageRecord]) -> None:
        """One event file per (re-)run of ``arm``; errors are warnings, never a failed run."""
        try:
            params, metrics = arm_record(self.run_dir, arm, result)
            writer = self.writer_class(log_dir=str(self.logdir / arm.path))
            try:
                writer.add_text("params", "\n".join(f"    {k}: {v}" for k, v in params.items()))
                for name, value, step in metrics:
                    writer.add_scalar(name, value, global_step=step)
            finally:
                writer.close()
        except Exception:
            logger.warning(
                "tracking: writing arm %s to TensorBoard failed", arm.path, exc_info=True
            )


class _Trackers(NullTracker):
    """Every enabled tracker, called in turn; ``reference`` is MLflow's."""

    def __init__(self, trackers: Sequence[NullTracker]) -> None:
        self.trackers = list(trackers)

    def log_arm(self, arm: Arm, result: ArmResult, records: Sequence[StageRecord]) -> None:
        for tracker in self.trackers:
            tracker.log_arm(arm, result, records)

    def finish(self, run_dir: Path, records: Sequence[StageRecord], seconds: float) -> None:
        for tracker in self.trackers:
            tracker.finish(run_dir, records, seconds)

    @property
    def reference(self) -> dict[str, str] | None:
        return next((t.reference for t in self.trackers if t.reference is not None), None)


_ARM_STAGES = ("select", "finetune", "evaluate")
_SHARED_STAGES = ("prepare", "model", "features")


def _stage_tags(records: Sequence[StageRecord], names: Sequence[str]) -> dict[str, str]:
    """``goracs.<stage>.key`` and ``goracs.<stage>.cached`` of each record named in ``names``."""
    tags = {}
    for rec in records:
        if rec.name in names:
            stage = rec.name.split("/", 1)[0]
            tags[f"goracs.{stage}.key"] = rec.key
            tags[f"goracs.{stage}.cached"] = str(rec.cached).lower()
    return tags


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@contextlib.contextmanager
def start_tracking(cfg: Any, *, command: str) -> Iterator[NullTracker]:
    """The tracker of one invocation (``command``: ``run`` or ``bench``) of ``cfg`` (a RunConfig
    or BenchConfig): :class:`NullTracker` when ``cfg.tracking`` is off, else an
    :class:`MlflowTracker` whose parent run ends ``FINISHED``, or ``FAILED``/``KILLED`` when the
    block raises.

    Raises
    ------
    ValueError
        Tracking is on and MLflow is not installed (:data:`INSTALL_HINT`), or no MLflow run can be
        started at ``tracking.mlflow_uri``; raised before any stage runs.
    """
    if not cfg.tracking.enabled:
        yield NullTracker()
        return
    board = [TensorBoardTracker(cfg)] if cfg.tracking.tensorboard else []
    if cfg.tracking.mlflow_uri is None:
        yield _Trackers(board)
        return
    tracker = MlflowTracker(cfg, command=command)
    try:
        yield _Trackers([tracker, *board])
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")

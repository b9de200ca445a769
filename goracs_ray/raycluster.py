"""Connect to Ray: an existing cluster when one is given or running, else an embedded local one.

The only module besides the Ray shells (``features/actors.py``, ``select/distributed.py``,
``train/``) that imports ray.
"""

from __future__ import annotations

import logging
import os

__all__ = ["ensure_ray"]

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process.

    Parameters
    ----------
    address : str, optional
        ``"auto"``, ``"ray://host:10001"`` or a GCS address to join a running cluster. ``None``
        joins the cluster named by ``RAY_ADDRESS`` (set by ``ray job submit``) or else starts an
        embedded local Ray, bound to 127.0.0.1.
    num_cpus : int, optional
        Logical CPUs of the local Ray (ignored when joining a cluster). Default: max(4, cores), so
        fractional-CPU actors and Ray Data read tasks do not starve each other on small machines.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING)
        return
    cpus = num_cpus or max(4, os.cpu_count() or 1)
    logger.info("starting a local Ray with %d logical CPUs", cpus)
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        _node_ip_address="127.0.0.1",
    )

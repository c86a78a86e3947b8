"""Config -> a dask.distributed Client: a LocalCluster (the embedded default) or a running scheduler.

Every cluster gets the encoder WorkerPlugin, so each worker loads the model once and keeps it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

from distributed import Client, LocalCluster

from .config import ClusterConfig
from .encoder import EncoderPlugin

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def make_client(cfg: ClusterConfig) -> Iterator[Client]:
    """A connected Client for ``cluster.kind``; the cluster it started is closed on exit."""
    # distributed sets its own loggers up at import; keep its routine INFO lines out of the CLI.
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.kind == "address":
        if not cfg.address:
            raise ValueError(
                "cluster.kind is address but cluster.address is empty; set it to tcp://host:8786"
            )
        client = Client(cfg.address)
        cluster = None
    else:
        n_workers = cfg.n_workers or max(1, (os.cpu_count() or 1) // max(1, cfg.threads_per_worker))
        # Ctrl-C and `kill -TERM` reach the whole process group: worker processes started with
        # these signals ignored (inherited across exec) stay up while the daemon drains and
        # checkpoints, instead of dying with the actors' in-memory state.
        with _signals_ignored():
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=cfg.threads_per_worker,
                processes=True,
                memory_limit=cfg.memory_limit,
                dashboard_address=cfg.dashboard_address,
            )
        client = Client(cluster)
    try:
        client.register_plugin(EncoderPlugin(), name=EncoderPlugin.name)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

"""Config -> a dask.distributed Client on an existing engine; never a home-made launcher.

``cluster.kind``:
- ``local``: a LocalCluster with worker processes (the embedded default);
- ``slurm`` / ``pbs``: dask-jobqueue ``SLURMCluster`` / ``PBSCluster``; each entry of
  ``cluster.groups`` is a job template (the first also sets the scheduler's job defaults);
- ``kubernetes``: the dask-kubernetes operator's ``KubeCluster`` with one worker group per entry;
- ``address``: a running scheduler, optionally over TLS (``distributed.security.Security``).

A group with ``gpus > 0`` starts its workers with ``--resources GPU=<gpus>``; the other groups then
get ``--resources CPU=<threads>``, so the pipeline can send encode tasks to GPU workers and
read/mask tasks to CPU workers. Every cluster gets the encoder WorkerPlugin, so each worker loads
the model once (on its first encode task) and keeps it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import dask
from distributed import Client, LocalCluster

from ..config import ClusterConfig, WorkerGroup
from ..runtime.encoder import EncoderPlugin

log = logging.getLogger(__name__)

GPU, CPU = "GPU", "CPU"

# Dask sets MALLOC_TRIM_THRESHOLD_ in workers, which switches off glibc's dynamic mmap
# threshold: every tensor above 128 KiB is then mmap'ed and unmapped per forward pass, and the
# page faults made the encoder 45% slower than the same code outside Dask (benchmarks/RESULTS.md).
# A fixed mmap threshold keeps such buffers in the heap; the trim threshold still returns
# freed memory to the OS.
WORKER_ENV: dict[str, str] = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}


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


def worker_resources(group: WorkerGroup, cfg: ClusterConfig) -> dict[str, int]:
    """Abstract resources a group's workers advertise (none when no group has GPUs)."""
    if group.gpus:
        return {GPU: group.gpus}
    if cfg.has_gpu_groups:
        return {CPU: max(1, group.cores // group.processes)}
    return {}


def _resource_args(resources: dict[str, int]) -> list[str]:
    if not resources:
        return []
    return ["--resources", ",".join(f"{k}={v}" for k, v in resources.items())]


def job_kwargs(group: WorkerGroup, cfg: ClusterConfig) -> dict[str, Any]:
    """dask-jobqueue Job options for one worker group."""
    kw: dict[str, Any] = {
        "cores": group.cores,
        "memory": group.memory,
        "processes": group.processes,
        "queue": group.queue,
        "account": group.account,
        "walltime": group.walltime,
        "interface": group.interface,
        "job_extra_directives": list(group.job_extra_directives),
        "job_script_prologue": [
            *(f"export {k}={v}" for k, v in {**WORKER_ENV, **group.env}.items()),
            *group.job_script_prologue,
        ],
        "worker_extra_args": [
            *group.worker_extra_args,
            *_resource_args(worker_resources(group, cfg)),
        ],
        "local_directory": group.local_directory,
        "log_directory": group.log_directory,
        "job_name": f"{cfg.name}-{group.name}",
        **group.job_options,
    }
    return {k: v for k, v in kw.items() if v is not None}


def _jobqueue_cluster(cfg: ClusterConfig) -> Any:
    from dask_jobqueue import PBSCluster, SLURMCluster

    cls = SLURMCluster if cfg.kind == "slurm" else PBSCluster
    first, *others = cfg.groups
    scheduler_options: dict[str, Any] = {"dashboard_address": cfg.dashboard_address}
    if cfg.scheduler_interface:
        scheduler_options["interface"] = cfg.scheduler_interface
    cluster = cls(scheduler_options=scheduler_options, **job_kwargs(first, cfg))
    log.info("%s job script of group %s:\n%s", cfg.kind, first.name, cluster.job_script())
    if cfg.adapt_maximum is not None:
        cluster.adapt(minimum_jobs=cfg.adapt_minimum or 0, maximum_jobs=cfg.adapt_maximum)
    else:
        cluster.scale(jobs=first.n_workers)
    # Further groups are more entries in the same SpecCluster (one scheduler), each with its
    # own job template; jobqueue's scale() only ever adds the first group's template.
    for group in others:
        options = {**cluster._job_kwargs, **job_kwargs(group, cfg)}
        spec: dict[str, Any] = {"cls": cluster.job_cls, "options": options}
        if group.processes > 1:
            spec["group"] = [f"-{i}" for i in range(group.processes)]
        for i in range(group.n_workers):
            cluster.worker_spec[f"{cfg.name}-{group.name}-{i}"] = copy.deepcopy(spec)
    if others:
        cluster.sync(cluster._correct_state)
    return cluster


# ---------------------------------------------------------------- kubernetes


def _k8s_resources(group: WorkerGroup) -> dict[str, Any]:
    memory = group.memory.upper().replace("GB", "G").replace("MB", "M")
    res: dict[str, Any] = {
        "requests": {"cpu": str(group.cores), "memory": memory},
        "limits": {"cpu": str(group.cores), "memory": memory},
    }
    if group.gpus:
        res["limits"]["nvidia.com/gpu"] = str(group.gpus)
    return res


def _worker_command(group: WorkerGroup, cfg: ClusterConfig) -> list[str]:
    threads = max(1, group.cores // group.processes)
    return [
        "dask",
        "worker",
        "--nthreads",
        str(threads),
        *group.worker_extra_args,
        *_resource_args(worker_resources(group, cfg)),
    ]


def _with_secret(spec: dict[str, Any], secret: str | None) -> dict[str, Any]:
    """Credentials reach the containers as environment variables from a Kubernetes secret."""
    if secret:
        for container in spec["spec"]["containers"]:
            container.setdefault("envFrom", []).append(
                {"secretRef": {"name": secret, "optional": True}}
            )
    return spec


def kubernetes_specs(cfg: ClusterConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The DaskCluster resource (first group as its default workers) and one DaskWorkerGroup
    resource per further group, as the dask-kubernetes operator takes them."""
    from dask_kubernetes.operator import make_cluster_spec, make_worker_spec

    first, *others = cfg.groups
    cluster = make_cluster_spec(
        name=cfg.name,
        image=first.image or cfg.image,
        n_workers=first.n_workers,
        resources=_k8s_resources(first),
        env={**WORKER_ENV, **first.env},
        worker_command=_worker_command(first, cfg),
    )
    if cfg.namespace:
        cluster["metadata"]["namespace"] = cfg.namespace
    # make_cluster_spec gives the scheduler the workers' resources; it needs far less.
    cluster["spec"]["scheduler"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "1", "memory": "4G"},
        "limits": {"cpu": "2", "memory": "8G"},
    }
    _with_secret(cluster["spec"]["worker"], cfg.secret)
    _with_secret(cluster["spec"]["scheduler"], cfg.secret)
    groups = []
    for group in others:
        worker = make_worker_spec(
            image=group.image or cfg.image,
            n_workers=group.n_workers,
            resources=_k8s_resources(group),
            env={**WORKER_ENV, **group.env},
            worker_command=_worker_command(group, cfg),
        )
        _with_secret(worker, cfg.secret)
        meta: dict[str, Any] = {"name": f"{cfg.name}-{group.name}"}
        if cfg.namespace:
            meta["namespace"] = cfg.namespace
        groups.append(
            {
                "apiVersion": "kubernetes.dask.org/v1",
                "kind": "DaskWorkerGroup",
                "metadata": meta,
                "spec": {"cluster": cfg.name, "worker": worker},
            }
        )
    return cluster, groups


def _kubernetes_cluster(cfg: ClusterConfig) -> Any:
    from dask_kubernetes.operator import KubeCluster

    spec, groups = kubernetes_specs(cfg)
    cluster = KubeCluster(custom_cluster_spec=spec, namespace=cfg.namespace)
    for group, resource in zip(cfg.groups[1:], groups, strict=True):
        cluster.add_worker_group(
            name=group.name, n_workers=group.n_workers, custom_spec=resource["spec"]["worker"]
        )
    if cfg.adapt_maximum is not None:
        cluster.adapt(minimum=cfg.adapt_minimum or 0, maximum=cfg.adapt_maximum)
    return cluster


# ---------------------------------------------------------------- client


def security(cfg: ClusterConfig) -> Any:
    """TLS settings for ``cluster.kind: address`` (None: plain TCP)."""
    if not cfg.tls.enabled:
        return None
    from distributed.security import Security

    missing = [k for k in ("ca_file", "cert", "key") if not getattr(cfg.tls, k)]
    if missing:
        raise ValueError(f"cluster.tls needs ca_file, cert and key; missing {', '.join(missing)}")
    return Security(
        tls_ca_file=cfg.tls.ca_file,
        tls_client_cert=cfg.tls.cert,
        tls_client_key=cfg.tls.key,
        require_encryption=True,
    )


@contextlib.contextmanager
def make_client(cfg: ClusterConfig) -> Iterator[Client]:
    """A connected Client for ``cluster.kind``; the cluster it started is closed on exit."""
    cluster: Any = None
    if cfg.kind == "address":
        if not cfg.address:
            raise ValueError(
                "cluster.kind is address but cluster.address is empty; set it to tcp://host:8786"
            )
        client = Client(cfg.address, security=security(cfg))
    elif cfg.kind in ("slurm", "pbs"):
        cluster = _jobqueue_cluster(cfg)
        client = Client(cluster)
    elif cfg.kind == "kubernetes":
        cluster = _kubernetes_cluster(cfg)
        client = Client(cluster)
    else:
        n_workers = cfg.n_workers or max(1, (os.cpu_count() or 1) // max(1, cfg.threads_per_worker))
        # Ctrl-C and `kill -TERM` reach the whole process group: worker processes started with
        # these signals ignored (inherited across exec) stay up while the daemon drains and
        # checkpoints, instead of dying with the actors' in-memory state.
        # glibc reads MALLOC_* when a process starts: they must be in the nanny's pre-spawn
        # environment (Nanny(env=...) is applied after the worker process started).
        spawn_env = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENV.items()}
        with _signals_ignored(), dask.config.set(spawn_env):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=cfg.threads_per_worker,
                processes=True,
                memory_limit=cfg.memory_limit,
                dashboard_address=cfg.dashboard_address,
            )
        if cfg.adapt_maximum is not None:
            # Workers come and go with the load; the one holding a statistics actor is never
            # retired by dask (actors cannot move), others drain their data first.
            cluster.adapt(minimum=max(1, cfg.adapt_minimum or 1), maximum=cfg.adapt_maximum)
        client = Client(cluster)
    try:
        client.register_plugin(EncoderPlugin(), name=EncoderPlugin.name)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

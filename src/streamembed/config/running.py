"""The sections of how a run is carried out: the Dask cluster (``cluster``: local, SLURM, PBS,
Kubernetes, with its worker groups and TLS), the driver's backpressure (``pipeline``), the
monitoring daemon and its webhook (``daemon``), the web map (``serve``) and the similarity
index (``similarity``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .base import Section


class WorkerGroup(Section):
    """One kind of worker: a jobqueue job template or a Kubernetes worker group."""

    name: str = "cpu"
    n_workers: int = Field(1, ge=0, description="jobs (jobqueue) or pods (kubernetes) to start")
    gpus: int = Field(0, ge=0, description=">0: tagged GPU=<gpus>; encode tasks run only here")
    cores: int = Field(1, ge=1, description="cores per job / pod")
    memory: str = Field("4GB", description="memory per job / pod")
    processes: int = Field(1, ge=1, description="worker processes per job (cores split)")
    queue: str | None = None
    account: str | None = None
    walltime: str = "04:00:00"
    interface: str | None = Field(None, description="network interface, e.g. ib0")
    job_extra_directives: tuple[str, ...] = Field((), description="e.g. [--gres=gpu:1]")
    job_script_prologue: tuple[str, ...] = Field(
        (), description="shell lines before the worker starts: module load, conda activate"
    )
    worker_extra_args: tuple[str, ...] = ()
    local_directory: str | None = None
    log_directory: str | None = None
    job_options: dict[str, Any] = Field(
        default_factory=dict,
        description="any other dask-jobqueue Job option (e.g. resource_spec for PBS)",
    )
    image: str | None = Field(
        None, description="kubernetes: container image (default: cluster.image)"
    )
    env: dict[str, str] = Field(default_factory=dict, description="plain environment variables")


class TLSConfig(Section):
    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file or self.cert or self.key)


class ClusterConfig(Section):
    kind: Literal["local", "slurm", "pbs", "kubernetes", "address"] = "local"
    # local
    n_workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    dashboard_address: str = ":8787"
    # address
    address: str | None = None
    tls: TLSConfig = TLSConfig()
    # slurm | pbs | kubernetes
    groups: tuple[WorkerGroup, ...] = (WorkerGroup(),)
    adapt_minimum: int | None = Field(
        None, ge=0, description="adaptive scaling: min jobs/pods (local: worker processes)"
    )
    adapt_maximum: int | None = Field(
        None, ge=1, description="adaptive scaling: max jobs/pods (local: worker processes)"
    )
    scheduler_interface: str | None = None
    # kubernetes
    name: str = "streamembed"
    namespace: str | None = None
    image: str = "ghcr.io/streamembed/streamembed:latest"
    secret: str | None = Field(
        "cdse-credentials", description="Kubernetes secret whose keys become worker env vars"
    )

    @model_validator(mode="after")
    def _groups(self) -> ClusterConfig:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"cluster.groups names must be unique, got {names}")
        if not self.groups:
            raise ValueError("cluster.groups needs at least one worker group")
        if self.adapt_maximum is not None and len(self.groups) > 1:
            raise ValueError(
                "adaptive scaling (cluster.adapt_maximum) works on one worker group; with "
                "several groups give each a fixed n_workers"
            )
        return self

    @property
    def has_gpu_groups(self) -> bool:
        # For kind address the groups describe the running cluster (e.g. the generated
        # Kubernetes deployment), so GPU workers still queued are expected, not guessed.
        return self.kind != "local" and any(g.gpus for g in self.groups)


class PipelineConfig(Section):
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="acquisitions being read/encoded at once (null: as many as keep the block "
        "queue full, at most 2 per worker thread)",
    )
    max_blocks_in_flight: int | None = Field(
        None, ge=1, description="block tasks submitted at once (null: 2 per worker thread)"
    )
    poll_seconds: float = Field(300.0, gt=0)
    outage_max_wait_seconds: float = Field(
        3600.0, gt=0, description="while the source is down, polls back off up to this"
    )
    wait_seconds: float = Field(
        5.0, gt=0, description="how often the driver loop wakes while tasks run (no time limit)"
    )


class WebhookConfig(Section):
    url: str | None = Field(
        None,
        description="POST a GeoJSON summary of each new anomaly file here (null: off); a token "
        "belongs in the URL's query only if the receiver needs one: it is never logged",
    )
    attempts: int = Field(8, ge=1, description="tries per file before it is counted as failed")
    backoff_seconds: float = Field(2.0, gt=0, description="first wait between tries, doubling")
    max_backoff_seconds: float = Field(300.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)


class DaemonConfig(Section):
    metrics_port: int | None = Field(
        9464,
        ge=0,
        le=65535,
        description="`streamembed monitor` serves /metrics, /healthz and /readyz here "
        "(0: any free port, null: off)",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="address the metrics server binds: loopback on a laptop; 0.0.0.0 where a "
        "Prometheus elsewhere scrapes it (the Kubernetes manifests)",
    )
    stale_polls: float = Field(
        3.0, gt=0, description="/healthz fails when the loop has not turned for this many polls"
    )
    webhook: WebhookConfig = WebhookConfig()


class ServeConfig(Section):
    host: str = Field(
        "127.0.0.1",
        description="`streamembed serve` binds here; beyond loopback, set credentials in the "
        "environment (docs/operations.md, Security)",
    )
    port: int = Field(8000, ge=0, le=65535)
    max_download_rows: int = Field(
        200_000, gt=0, description="the largest view /api/download returns (413 beyond it)"
    )
    basemap: str | None = Field(
        None,
        description="XYZ tile URL template under the anomalies, e.g. "
        "https://tile.openstreetmap.org/{z}/{x}/{y}.png (null: none; a basemap needs internet)",
    )
    refresh_seconds: float = Field(10.0, gt=0, description="how often the page looks for news")


class SimilarityConfig(Section):
    index_on_commit: bool = Field(
        False,
        description="add each run's new acquisitions to the tiles' similarity indexes when the "
        "run ends (else `streamembed similar` adds them on its next query); building took "
        "210 s for two full-tile acquisitions on the 2-core dev VM (benchmarks/RESULTS.md)",
    )
    min_clear: float = Field(0.9, ge=0, le=1, description="cells indexed: clear fraction")

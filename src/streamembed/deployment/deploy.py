"""Kubernetes manifests generated from config.yaml: ``streamembed manifests -o DIR``.

- ``daskcluster.yaml``: the dask-kubernetes operator's ``DaskCluster`` (scheduler + the first
  worker group) and one ``DaskWorkerGroup`` per further group (GPU groups ask for
  ``nvidia.com/gpu`` and start with ``--resources GPU=<n>``);
- ``daemon.yaml``: a ConfigMap with the config, the volume claims, and the Deployment that runs
  ``streamembed monitor`` against the DaskCluster's scheduler service. Two modes, from
  ``output``: a bucket URL (``s3://…``: the outputs go to object storage, workers mount
  nothing, the daemon's ledger lives on a small ReadWriteOnce claim), or a path (one
  ReadWriteMany claim shared by the workers and the daemon: workers append the Zarr store);
- ``secret.example.yaml``: the shape of the credentials secret (values are placeholders; create
  the real one with ``kubectl create secret``, never commit it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..config import Config
from ..storage import is_remote
from .cluster import kubernetes_specs

DATA_MOUNT = "/data"
CONFIG_MOUNT = "/etc/streamembed"


def _mount_data(pod_spec: dict[str, Any], claim: str) -> None:
    pod_spec.setdefault("volumes", []).append(
        {"name": "data", "persistentVolumeClaim": {"claimName": claim}}
    )
    for container in pod_spec["containers"]:
        container.setdefault("volumeMounts", []).append({"name": "data", "mountPath": DATA_MOUNT})


def _claim(name: str, mode: str, size: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, **meta},
        "spec": {"accessModes": [mode], "resources": {"requests": {"storage": size}}},
    }


def kubernetes_manifests(cfg: Config) -> dict[str, list[dict[str, Any]]]:
    """{file name: [resources]} for a Kubernetes deployment of this config."""
    k = cfg.cluster
    name = k.name
    meta: dict[str, Any] = {"namespace": k.namespace} if k.namespace else {}
    bucket = is_remote(cfg.output)
    cluster, groups = kubernetes_specs(k)
    if bucket:
        # Outputs in the bucket (workers write blocks there with the secret's keys); only the
        # daemon's SQLite ledger needs a disk, and one pod mounts it.
        claim = f"{name}-ledger"
        overrides: dict[str, str | None] = {"ledger": f"{DATA_MOUNT}/ledger.sqlite"}
        claims = [_claim(claim, "ReadWriteOnce", "1Gi", meta)]
    else:
        # Everything the pods write goes to the shared volume.
        claim = f"{name}-data"
        overrides = {"output": f"{DATA_MOUNT}/output", "ledger": None}
        claims = [_claim(claim, "ReadWriteMany", "500Gi", meta)]
        _mount_data(cluster["spec"]["worker"]["spec"], claim)
        for group in groups:
            _mount_data(group["spec"]["worker"]["spec"], claim)
    # In a pod the probes and Prometheus reach the daemon's metrics on the pod's address, not
    # on loopback (a laptop's default, config.yaml).
    daemon_cfg = cfg.with_overrides(
        **overrides, **{"cluster.kind": "address", "daemon.metrics_host": "0.0.0.0"}
    ).with_overrides(**{"cluster.address": f"tcp://{name}-scheduler:8786"})
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config", **meta},
        "data": {
            "config.yaml": yaml.safe_dump(daemon_cfg.model_dump(mode="json"), sort_keys=False)
        },
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": k.secret or f"{name}-credentials", **meta},
        "type": "Opaque",
        "stringData": {
            "CDSE_S3_ACCESS_KEY": "<from https://eodata-s3keysmanager.dataspace.copernicus.eu>",
            "CDSE_S3_SECRET_KEY": "<secret key>",
            **(
                {
                    "AWS_ACCESS_KEY_ID": "<the output bucket's access key>",
                    "AWS_SECRET_ACCESS_KEY": "<its secret key>",
                    "AWS_ENDPOINT_URL": "<https://… for a non-AWS S3 (CDSE, MinIO, Ceph)>",
                }
                if bucket
                else {}
            ),
        },
    }
    return {
        "daskcluster.yaml": [cluster, *groups],
        "daemon.yaml": [
            config_map,
            *claims,
            _daemon_deployment(cfg, claim, meta),
            *_metrics_service(cfg, meta),
        ],
        "secret.example.yaml": [secret],
    }


def _probes(port: int) -> dict[str, Any]:
    """Liveness on /healthz (the loop turns), readiness on /readyz (scheduler, workers, source);
    the startup probe covers the minutes a cold cluster takes to place the statistics actors."""

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "metrics"},
            "periodSeconds": period,
            "timeoutSeconds": 10,
            "failureThreshold": failures,
        }

    return {
        "ports": [{"name": "metrics", "containerPort": port}],
        "startupProbe": probe("/healthz", 10, 60),
        "livenessProbe": probe("/healthz", 30, 3),
        "readinessProbe": probe("/readyz", 15, 2),
    }


def _metrics_service(cfg: Config, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """A Service in front of the daemon's metrics port (what a ServiceMonitor selects)."""
    port = cfg.daemon.metrics_port
    if not port:
        return []
    name = cfg.cluster.name
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": f"{name}-monitor-metrics",
                "labels": {"app": f"{name}-monitor"},
                **meta,
            },
            "spec": {
                "selector": {"app": f"{name}-monitor"},
                "ports": [{"name": "metrics", "port": port, "targetPort": "metrics"}],
            },
        }
    ]


def _daemon_deployment(cfg: Config, claim: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The monitor daemon: one replica (the ledger has a single writer), config from the map."""
    k = cfg.cluster
    name = k.name
    daemon_container: dict[str, Any] = {
        "name": "monitor",
        "image": k.image,
        "args": ["streamembed", "monitor", "--config", f"{CONFIG_MOUNT}/config.yaml"],
        "resources": {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        },
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}],
    }
    port = cfg.daemon.metrics_port
    template_meta: dict[str, Any] = {"labels": {"app": f"{name}-monitor"}}
    if port:  # 0 (any free port) cannot be probed: the manifests need a fixed one
        daemon_container.update(_probes(port))
        template_meta["annotations"] = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics",
        }
    if k.secret:
        daemon_container["envFrom"] = [{"secretRef": {"name": k.secret, "optional": True}}]
    daemon_pod: dict[str, Any] = {
        "containers": [daemon_container],
        "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}}],
        # SIGTERM lets the daemon finish in-flight acquisitions and checkpoint.
        "terminationGracePeriodSeconds": 300,
    }
    _mount_data(daemon_pod, claim)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-monitor", **meta},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": f"{name}-monitor"}},
            "template": {
                "metadata": template_meta,
                "spec": daemon_pod,
            },
        },
    }


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_NoAliases.add_representer(str, _str)


def write_manifests(cfg: Config, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, docs in kubernetes_manifests(cfg).items():
        path = out / fname
        header = (
            "# Generated by `streamembed manifests` from config.yaml; edit the config, not this.\n"
        )
        path.write_text(header + yaml.dump_all(docs, Dumper=_NoAliases, sort_keys=False, width=100))
        written.append(path)
    return written

"""Deployment files generated from config and validated: Kubernetes operator resources against
the dask-kubernetes CRD schemas and the Kubernetes API models, jobqueue job scripts, Dockerfiles."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from streamembed.config import Config, load_config
from streamembed.deployment.cluster import job_kwargs
from streamembed.deployment.deploy import kubernetes_manifests, write_manifests

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "cluster" / "kubernetes"


def _crd_schema(kind: str) -> dict:
    import dask_kubernetes

    crds = Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm"
    path = next(crds.rglob(f"crds/{kind.lower()}.yaml"))
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


def _k8s_model(doc: dict, model: str):
    """Deserialise into the official Kubernetes client model (checks required fields, types)."""
    import json

    from kubernetes.client import ApiClient

    return ApiClient().deserialize(json.dumps(doc), model, "application/json")


def test_kubernetes_manifests_validate_against_the_operator_and_api():
    cfg = load_config(K8S / "config.yaml", {})
    manifests = kubernetes_manifests(cfg)
    cluster, *groups = manifests["daskcluster.yaml"]
    jsonschema.validate(cluster, _crd_schema("DaskCluster"))
    assert len(groups) == 1
    for group in groups:
        jsonschema.validate(group, _crd_schema("DaskWorkerGroup"))
    # A wrong type is caught: the schema check is real.
    broken = {**cluster, "spec": {**cluster["spec"], "worker": {"replicas": "four"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _crd_schema("DaskCluster"))

    cpu = cluster["spec"]["worker"]["spec"]["containers"][0]
    gpu = groups[0]["spec"]["worker"]["spec"]["containers"][0]
    assert " ".join(cpu["args"]).count("--resources CPU=4") == 1
    assert " ".join(gpu["args"]).count("--resources GPU=1") == 1
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["image"].endswith("-cuda") and not cpu["image"].endswith("-cuda")
    for container in (cpu, gpu):
        assert {"secretRef": {"name": "cdse-credentials", "optional": True}} in container["envFrom"]
        # Bucket mode: the workers write to the bucket and mount no volume.
        assert not container.get("volumeMounts")
        # Worker pods are plain Kubernetes pod specs too.
    _k8s_model(cluster["spec"]["worker"]["spec"], "V1PodSpec")
    _k8s_model(groups[0]["spec"]["worker"]["spec"], "V1PodSpec")

    config_map, pvc, deployment, service = manifests["daemon.yaml"]
    _k8s_model(config_map, "V1ConfigMap")
    _k8s_model(pvc, "V1PersistentVolumeClaim")
    dep = _k8s_model(deployment, "V1Deployment")
    monitor = dep.spec.template.spec.containers[0]
    assert monitor.args[:2] == ["streamembed", "monitor"]
    # Probes and a scrape target on the daemon's metrics port (daemon.metrics_port).
    port = cfg.daemon.metrics_port
    assert [(p.name, p.container_port) for p in monitor.ports] == [("metrics", port)]
    assert monitor.liveness_probe.http_get.path == "/healthz"
    assert monitor.readiness_probe.http_get.path == "/readyz"
    assert monitor.startup_probe.http_get.path == "/healthz"
    annotations = dep.spec.template.metadata.annotations
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    svc = _k8s_model(service, "V1Service")
    assert svc.spec.selector == dep.spec.template.metadata.labels
    assert svc.spec.ports[0].target_port == "metrics"
    (secret,) = manifests["secret.example.yaml"]
    _k8s_model(secret, "V1Secret")
    assert secret["metadata"]["name"] == "cdse-credentials"
    with pytest.raises(ValueError):
        _k8s_model({"containers": [{"image": "x"}]}, "V1PodSpec")  # no container name

    # The daemon's config is a valid config that connects to the operator's scheduler service
    # and knows a GPU group exists (encode tasks wait for it).
    daemon_cfg = Config.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert daemon_cfg.cluster.kind == "address"
    assert daemon_cfg.cluster.address == "tcp://streamembed-scheduler:8786"
    assert daemon_cfg.cluster.has_gpu_groups and daemon_cfg.output.startswith("s3://")
    # Its metrics bind the pod's address (probes, Prometheus); a laptop's stay on loopback.
    assert daemon_cfg.daemon.metrics_host == "0.0.0.0"
    assert load_config(REPO / "config.yaml").daemon.metrics_host == "127.0.0.1"
    # Only the ledger needs a disk: a small claim one pod mounts.
    assert (
        pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
        and daemon_cfg.ledger == "/data/ledger.sqlite"
    )
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "data", "mountPath": "/data"} in mounts
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(
        secret["stringData"]
    )


def test_kubernetes_volume_mode_shares_one_read_write_many_claim():
    cfg = load_config(K8S / "config.yaml", {}).with_overrides(output="/data/output")
    manifests = kubernetes_manifests(cfg)
    cluster, *groups = manifests["daskcluster.yaml"]
    config_map, pvc, deployment, _service = manifests["daemon.yaml"]
    _k8s_model(pvc, "V1PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for spec in (cluster["spec"]["worker"]["spec"], groups[0]["spec"]["worker"]["spec"]):
        assert {"name": "data", "mountPath": "/data"} in spec["containers"][0]["volumeMounts"]
        assert spec["volumes"] == [
            {"name": "data", "persistentVolumeClaim": {"claimName": "streamembed-data"}}
        ]
    daemon_cfg = Config.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert daemon_cfg.output == "/data/output" and daemon_cfg.ledger is None
    assert daemon_cfg.layout.ledger == Path("/data/output/ledger.sqlite")
    assert "AWS_ACCESS_KEY_ID" not in manifests["secret.example.yaml"][0]["stringData"]


def test_committed_kubernetes_manifests_are_generated_from_config(tmp_path):
    cfg = load_config(K8S / "config.yaml", {})
    for path in write_manifests(cfg, tmp_path):
        committed = K8S / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run `streamembed manifests --config "
            "cluster/kubernetes/config.yaml -o cluster/kubernetes`"
        )


@pytest.mark.parametrize("site", ["slurm", "pbs"])
def test_jobqueue_job_scripts_from_the_site_configs(site):
    from dask_jobqueue.pbs import PBSJob
    from dask_jobqueue.slurm import SLURMJob

    cfg = load_config(REPO / "cluster" / site / "config.yaml", {})
    assert cfg.cluster.kind == site
    job_cls = SLURMJob if site == "slurm" else PBSJob
    scripts = {
        g.name: job_cls(scheduler="tcp://10.0.0.1:8786", **job_kwargs(g, cfg.cluster)).job_script()
        for g in cfg.cluster.groups
    }
    cpu, gpu = scripts["cpu"], scripts["gpu"]
    assert "--resources CPU=4" in cpu and "GPU" not in cpu
    assert "--resources GPU=1" in gpu
    assert "source /projects/eo/streamembed/.venv/bin/activate" in gpu
    if site == "slurm":
        assert "#SBATCH --gres=gpu:1" in gpu and "#SBATCH -p gpu" in gpu
        assert "#SBATCH -A eo-project" in cpu and "#SBATCH -t 12:00:00" in cpu
    else:
        assert "#PBS -l select=1:ncpus=8:ngpus=1:mem=64GB" in gpu and "#PBS -q gpu" in gpu
        assert "#PBS -A eo-project" in cpu and "#PBS -l walltime=12:00:00" in cpu
    for launcher in ("slurm/streamembed.sbatch", "pbs/streamembed.pbs"):
        text = (REPO / "cluster" / launcher).read_text()
        assert "streamembed monitor --config" in text and "set -euo pipefail" in text


def _dockerfile_problems(text: str) -> list[str]:
    """The hadolint rules that matter here, for machines without hadolint."""
    problems = []
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instr = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln for ln in instr if ln.upper().startswith("FROM ")]
    if not froms:
        problems.append("no FROM")
    for ln in froms:
        image = ln.split()[1]
        if ":" not in image or image.endswith(":latest"):
            problems.append(f"DL3006/DL3007: pin the base image tag: {ln}")
    for ln in instr:
        up = ln.upper()
        if up.startswith("RUN") and "apt-get install" in ln:
            if "--no-install-recommends" not in ln:
                problems.append(f"DL3015: apt-get install without --no-install-recommends: {ln}")
            if "rm -rf /var/lib/apt/lists" not in ln:
                problems.append(f"DL3009: apt lists not removed: {ln}")
            if " -y" not in ln:
                problems.append(f"DL3014: apt-get install without -y: {ln}")
        if up.startswith("RUN") and re.search(r"pip3? install", ln) and "--no-cache-dir" not in ln:
            problems.append(f"DL3042: pip install without --no-cache-dir: {ln}")
        if up.startswith(("CMD", "ENTRYPOINT")) and not ln.split(None, 1)[1].startswith("["):
            problems.append(f"DL3025: use JSON form: {ln}")
        if up.startswith("ADD "):
            problems.append(f"DL3020: use COPY: {ln}")
    users = [ln for ln in instr if ln.upper().startswith("USER ")]
    if not users or users[-1].split()[1] in ("root", "0"):
        problems.append("DL3002: the last USER must not be root")
    return problems


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_lint(name):
    path = K8S / name
    if shutil.which("hadolint"):
        proc = subprocess.run(["hadolint", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
    assert _dockerfile_problems(path.read_text()) == []
    # The linter finds what it checks for.
    bad = "FROM python\nRUN apt-get install curl\nRUN pip install x\nCMD streamembed\n"
    assert len(_dockerfile_problems(bad)) == 7  # tag, 3 apt rules, pip, CMD form, USER
    # Every file the image copies exists.
    for ln in path.read_text().splitlines():
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (REPO / src).exists(), src


def _self_signed(tmp_path: Path) -> tuple[str, str, str]:
    """A CA and one certificate it signed (for both scheduler and client), as PEM files."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("streamembed-test-ca"))
        .issuer_name(name("streamembed-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tuple(str(p) for p in paths)  # type: ignore[return-value]


def test_address_kind_connects_over_tls_only_with_the_certificates(tmp_path):
    from distributed import LocalCluster
    from distributed.security import Security

    from streamembed.config import ClusterConfig, TLSConfig
    from streamembed.deployment.cluster import make_client

    ca, cert, key = _self_signed(tmp_path)
    server_security = Security(
        tls_ca_file=ca,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        tls_client_cert=cert,
        tls_client_key=key,
        require_encryption=True,
    )
    with LocalCluster(
        n_workers=1,
        processes=False,
        protocol="tls://",
        host="127.0.0.1",
        security=server_security,
        dashboard_address=":0",
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        cfg = ClusterConfig(
            kind="address", address=address, tls=TLSConfig(ca_file=ca, cert=cert, key=key)
        )
        with make_client(cfg) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
        half = ClusterConfig(kind="address", address=address, tls=TLSConfig(ca_file=ca))
        with pytest.raises(ValueError, match=r"cluster\.tls needs ca_file"), make_client(half):
            pass
        plain = ClusterConfig(kind="address", address=address.replace("tls://", "tcp://"))
        with pytest.raises(OSError), make_client(plain):
            pass

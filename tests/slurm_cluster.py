"""A real single-node SLURM cluster on this machine, for the dask-jobqueue tests.

Needs root and Debian's ``slurmctld slurmd slurm-client munge`` (``.ci/run`` installs them).
Starts ``munged`` as the munge user, then ``slurmctld`` and ``slurmd`` in the foreground with a
``slurm.conf`` in a temporary folder (``proctrack/linuxproc``, no cgroups), and stops exactly the
processes it started, by PID. ``SLURM_CONF`` is exported so ``sbatch``/``squeue`` (and thus
dask-jobqueue) talk to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")


def why_unavailable() -> str | None:
    """None if a local SLURM can be started here, else the reason (for a clear skip)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd runs jobs as the submitting user)"
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if not _which(b)]
    if missing:
        return (
            f"SLURM binaries missing ({', '.join(missing)}); "
            f"apt-get install -y {' '.join(PACKAGES)} (as .ci/run does)"
        )
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")


def _memory_mib() -> int:
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return max(1024, total_kib // 1024 - 2048)  # headroom for the test process itself


class LocalSlurm:
    def __init__(self, workdir: Path, partition: str = "debug"):
        self.dir = Path(workdir)
        self.partition = partition
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.munged_pid: int | None = None
        self._old_conf = os.environ.get("SLURM_CONF")

    def _write_conf(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count() or 1
        self.conf.write_text(
            f"""ClusterName=streamembed
SlurmctldHost={self.host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SchedulerType=sched/backfill
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
NodeName={self.host} CPUs={cpus} RealMemory={_memory_mib()} State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _start_munge(self) -> None:
        run = Path("/run/munge")
        run.mkdir(parents=True, exist_ok=True)
        shutil.chown(run, "munge", "munge")
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return  # a munged is already serving this host; leave it alone
        started = subprocess.run(
            ["runuser", "-u", "munge", "--", _which("munged")], capture_output=True, text=True
        )
        if started.returncode != 0:
            raise RuntimeError(f"munged did not start: {started.stderr.strip()}")
        self.munged_pid = int(Path("/run/munge/munged.pid").read_text().split()[0])

    def start(self, timeout: float = 60) -> LocalSlurm:
        self._write_conf()
        self._start_munge()
        os.environ["SLURM_CONF"] = str(self.conf)
        for daemon in ("slurmctld", "slurmd"):
            out = open(self.dir / "log" / f"{daemon}.stdout", "w")  # noqa: SIM115 (kept open)
            self.procs.append(
                subprocess.Popen(
                    [_which(daemon), "-D", "-f", str(self.conf)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        end = time.time() + timeout
        while time.time() < end:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True
            ).stdout.strip()
            if state == "idle":
                return self
            for p in self.procs:
                if p.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"SLURM daemon exited: {self.logs()}")
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SLURM node not idle after {timeout} s: {self.logs()}")

    def logs(self) -> str:
        parts = []
        for f in sorted((self.dir / "log").glob("*")):
            parts.append(f"--- {f.name}\n" + f.read_text()[-2000:])
        return "\n".join(parts)

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-p", self.partition], capture_output=True)
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
        if self.munged_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.munged_pid, signal.SIGTERM)
            self.munged_pid = None
        if self._old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._old_conf

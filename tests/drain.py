"""Workers drained away during a run, as a shrinking allocation or a scale-down would: shared by
the adaptive-scaling tests (LocalCluster and SLURM)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# Adaptive scaling on a test run's short tasks (dask's defaults aim at minutes of queued work)
QUICK_ADAPT = {
    "distributed.adaptive.target-duration": "200ms",
    "distributed.adaptive.interval": "250ms",
    "distributed.adaptive.wait-count": 2,
}


@dataclass
class Drained:
    seen: list[int] = field(default_factory=list)  # workers at each look
    retired: list[str] = field(default_factory=list)


def _workers_without_actors(dask_scheduler) -> list[str]:
    return [w.address for w in dask_scheduler.workers.values() if not w.actors]


@contextmanager
def draining(client, every: float, each: int) -> Iterator[Drained]:
    """Look at the workers every ``every`` s and retire one (the newest without an actor)
    every ``each`` looks while there is more than one."""
    drained = Drained()
    done = threading.Event()

    def drain() -> None:
        while not done.wait(every):
            workers = list(client.scheduler_info()["workers"])
            drained.seen.append(len(workers))
            if len(drained.seen) % each == 0 and len(workers) > 1:
                # one without an actor: dask refuses to retire those gracefully
                free = client.run_on_scheduler(_workers_without_actors)
                drained.retired.extend(client.retire_workers(workers=free[-1:], close_workers=True))

    watcher = threading.Thread(target=drain, daemon=True)
    watcher.start()
    try:
        yield drained
    finally:
        done.set()
        watcher.join(timeout=30)

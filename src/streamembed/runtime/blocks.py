"""Block scheduling and backpressure: the blocks of the acquisitions being embedded, submitted
as read and encode tasks while the queue has room, oldest acquisition first.

One acquisition is the unit of the ledger, a block the unit of memory and of work: a full tile
is 36 blocks of 2048 px, a small one a single block. At most ``pipeline.max_blocks_in_flight``
block tasks are in the scheduler at once (default 2 per worker thread, counting the workers
adaptive scaling may start), so reads cannot run ahead of the encoder.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, Future, KilledWorker, wait

from ..acquisition import Acquisition
from ..config import Config
from ..grid import TileGrid
from ..layout import is_disk_full
from ..outputs.ledger import Failure
from ..outputs.store import Reservation
from .ingest import Block
from .report import RunReport, failure_class, one_line
from .tasks import BlockResult, encode_task, read_task, task_resources


@dataclass
class EmbeddingJob:
    """One acquisition being embedded: its reserved time step and its blocks."""

    acq: Acquisition
    grid: TileGrid
    reservation: Reservation
    todo: deque[Block]
    n_blocks: int
    running: dict[Future, int] = field(default_factory=dict)  # block task -> block index
    done: int = 0
    failed: str | None = None  # the first failing block's one-line reason
    failure: Failure = Failure.OTHER

    @property
    def finished(self) -> bool:
        return not self.running and (self.failed is not None or not self.todo)


class BlockScheduler:
    """The block tasks of one pipeline in flight on its client."""

    def __init__(self, cfg: Config, client: Client, token: str, volume: Path) -> None:
        self.cfg = cfg
        self.client = client
        self.token = token  # unique task keys: a key seen before returns the old result
        self.volume = volume  # a full one stops the run, it fails no acquisition
        self.encode_resources, self.ingest_resources = task_resources(cfg, client)
        self.futures: dict[Future, EmbeddingJob] = {}

    def retarget(self, client: Client) -> None:
        """Submit to ``client`` from now on (the scheduler was replaced)."""
        self.client = client
        self.encode_resources, self.ingest_resources = task_resources(self.cfg, client)

    def capacity(self) -> int:
        """Worker threads to keep busy: those connected now, or as many as adaptive scaling may
        start (a queue sized to the workers of the moment would never ask for more)."""
        threads = sum(self.client.nthreads().values())
        cluster = self.cfg.cluster
        if cluster.adapt_maximum is not None:
            per_worker = cluster.threads_per_worker if cluster.kind == "local" else (
                cluster.groups[0].cores
            )  # fmt: skip
            threads = max(threads, cluster.adapt_maximum * per_worker)
        return max(1, threads)

    def fill(self, active: list[EmbeddingJob], max_blocks: int, report: RunReport) -> None:
        """Submit blocks, oldest acquisition first, while fewer than ``max_blocks`` are in
        flight: the blocks of one acquisition finish together and its time step is committed
        before the next one's blocks take the workers."""
        for job in active:
            while job.todo and job.failed is None and len(self.futures) < max_blocks:
                block = job.todo.popleft()
                with report.driver.timed("submit"):
                    fut = self._submit(job, block)
                job.running[fut] = block.index
                self.futures[fut] = job

    def _submit(self, job: EmbeddingJob, block: Block) -> Future:
        a, grid = job.acq, job.grid
        tag = f"{a.id}-b{block.index}-{self.token}"
        pixels = self.client.submit(
            read_task, a, grid, block, self.cfg, key=f"read-{tag}", pure=False,
            resources=self.ingest_resources,
        )  # fmt: skip
        return self.client.submit(
            encode_task, pixels, job.reservation, self.cfg, key=f"encode-{tag}", pure=False,
            resources=self.encode_resources,
        )  # fmt: skip

    def finished(self, report: RunReport, bar: Any, timeout: float) -> Iterator[EmbeddingJob]:
        """Record the blocks done within ``timeout`` (maybe none); yield each acquisition whose
        blocks are all done, or one of which failed (its other blocks cancelled), as it ends."""
        for fut in self._wait(timeout):
            if fut not in self.futures:
                continue  # cancelled with its acquisition, failed in this same wait
            job = self.futures.pop(fut)
            self._block_done(fut, job.running.pop(fut), job, report)
            bar.set_postfix_str(f"block {job.done}/{job.n_blocks} of {job.acq.id}")
            if job.failed is not None:
                for other in job.running:
                    other.cancel()
                    self.futures.pop(other, None)
                job.running.clear()
            if job.finished:
                yield job

    def _wait(self, timeout: float) -> set[Future]:
        try:
            done, _ = wait(list(self.futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            # distributed's wait raises when nothing finished in time: an acquisition may take
            # as long as it takes, the loop only wakes to check for a stop request.
            return set()
        return set(done)

    def _block_done(self, fut: Future, index: int, job: EmbeddingJob, report: RunReport) -> None:
        try:
            result: BlockResult = fut.result()
        except KilledWorker as err:
            job.failed = (
                f"block {index} of {job.n_blocks}: the workers running it died "
                f"({one_line(err)}); most often the worker memory limit: lower "
                f"ingest.block_px (now {self.cfg.ingest.block_px}) or raise cluster.memory_limit"
            )
            job.failure = Failure.WORKER
            return
        except Exception as err:  # a task error names its input; keep the rest going
            if is_disk_full(err, self.volume):
                raise  # not the acquisition's fault: the run stops, the block is written later
            if job.failed is None:
                job.failed, job.failure = one_line(err), failure_class(err)
            return
        job.done += 1
        report.blocks += 1
        report.cells += result.cells
        report.block_bytes += result.bytes_in
        report.add_seconds(result.seconds)

    def cancel_all(self) -> None:
        """The run ends: what is still queued is left to the next one."""
        for fut in self.futures:
            fut.cancel()
        self.futures.clear()

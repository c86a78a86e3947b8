"""``streamembed bench``: throughput of the whole pipeline against the raw encoder, measured in
the same run, with per-stage times, worker memory, scaling and the statistics core's bandwidth.

The harness, apart from the runtime: ``config`` (the profile's ``bench`` section), ``measure``
(each measurement, a typed record), ``records`` (the JSON schema), ``report`` (RESULTS.md row,
plot), ``run`` (one profile end to end). Nothing here is asserted against a time.

Definitions (also in benchmarks/README.md):
- raw encoder bound: the same encoder (config, weights, threads per worker) on the same prepared
  windows in this process, nothing else running; for N CPU workers the bound is N times the
  one-process rate (perfect scaling), for GPU workers one process per GPU;
- pipeline throughput: acquisitions from discovery to anomaly file, divided by the wall time
  of the backfill on a warm cluster (model already loaded on every worker: a daemon loads once);
- per-stage seconds: worker-side timings returned by each task (the task stream gives the
  wall span of every task; stage timings split it);
- peak worker memory: RSS of every worker process sampled every ``bench.memory_sample_seconds``.
"""

from .config import BenchConfig, load_profile
from .records import BenchRecord
from .report import plot, table_row, update_results_md
from .run import run_bench

__all__ = [
    "BenchConfig",
    "BenchRecord",
    "load_profile",
    "plot",
    "run_bench",
    "table_row",
    "update_results_md",
]

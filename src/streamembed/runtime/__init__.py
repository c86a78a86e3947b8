"""The streaming runtime: acquisitions in, embeddings and anomalies out, on a Dask cluster.

``plan`` (pure: which acquisitions to embed, skip or fail, and in what order per tile),
``pipeline`` (the Dask layer, reading as the flow; its three jobs are ``blocks``: block tasks
under backpressure, ``lifecycle``: each acquisition over store and ledger, ``shards``: the
statistics actors, their placement and recovery, ``applies``: the applies in flight to them;
``derived``: row order, catalogue and indexes after a run; ``tasks``: what workers run,
``report``: what a run did), ``ingest`` (read, mask, resample, cell
summaries of one block; ``assets``, ``radiometry``, ``windows``, ``cloudmask`` and ``tilecache`` beside it), ``encoder``
(the worker-resident model; ``backbones``, ``checkpoints`` and ``runtimes`` build and load it),
``actor`` (one statistics shard per actor, strict time order per tile; ``state_cache``: its
resident tile states), ``stages`` (per-task timings), ``rebuild`` (statistics state rebuilt from the store).

May import: the foundation, ``sources``, ``detection`` and ``outputs``. Never ``deployment``,
``products``, ``operations``, ``harness`` or ``cli``: those use the runtime, and the runtime
runs the same whoever starts it (the daemon, a backfill, the benchmark, the evaluation).
"""

"""Outputs: what a run leaves behind, and the ledger that says how far it got.

``store`` (the Zarr embedding store: one group per tile, begin / write a block / commit; its
pieces ``store_format``, ``store_reads``, ``tile_meta``, ``tile_group`` and ``compaction``),
``sink`` (anomaly and alert rows as partitioned GeoParquet, written atomically), ``ledger``
(SQLite WAL: seen, embedded, applied, failed per acquisition, its queries in
``ledger_reads``; ``outbox``: what each webhook
was told, in the same file), ``catalog`` (the outputs' own
STAC catalogue), ``similar`` (the per-tile similarity index over stored embeddings).

May import: the foundation and ``detection`` (the sink writes what detection decided).
Never the runtime or anything above it: readers (the web map, export, evaluation) open the
outputs without starting a cluster.
"""

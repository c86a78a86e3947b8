"""The harness: what measures and demonstrates the system, apart from the runtime it drives.

``demo`` (the embedded default's sample archive and config), the synthetic writers
(``synthetic``: COGs + STAC items with planted events, written by ``cog_writer``;
``fullsize``: 10980 px products as COG or SAFE/JPEG 2000 with ``safe_layout``; ``mgrs``: tile
origins for many-tile archives; ``scenarios``: the demo's and the scenario set's truth), the
second, independent generator (``fieldsim`` with ``fieldsim_world`` and ``spectral_library``),
the evaluation (``evaluation``: backfill each scenario once, ``replay``: its store through
every detector, ``evaluate`` and ``alert_scores``: the scores, ``evaluation_report``: docs/evaluation.md and its
maps, ``real_series``: the real NDVI series) and ``bench`` (the throughput suite).

May import: every part but ``cli``. Nothing below imports the harness: a test or a benchmark
writes its data with it, the runtime never does.
"""

"""The harness: what measures and demonstrates the system, apart from the runtime it drives.

``demo`` (the embedded default's sample archive and config), the synthetic writers
(``synthetic``: COGs + STAC items with planted events, ``fullsize``: 10980 px products as COG or
SAFE/JPEG 2000 with ``safe_layout``, ``mgrs``: tile origins for many-tile archives,
``scenarios``: the demo's and the scenario set's truth), the second, independent generator
(``fieldsim`` with ``spectral_library``), the evaluation (``evaluation``: backfill each
scenario once, ``replay``: its store through every detector, ``evaluate``: the scores) and
``bench`` (the throughput suite).

May import: every part but ``cli``. Nothing below imports the harness: a test or a benchmark
writes its data with it, the runtime never does.
"""

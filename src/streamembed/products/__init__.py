"""Products users take away from the outputs: ``export`` (Major TOM GeoParquet, cells or
re-encoded 224 px fragments; ``fragments`` cuts them, ``majortom`` is the grid), ``anomaly_map`` (``streamembed map``:
a PNG of one tile's anomalies over its quicklook).

May import: the foundation, ``sources``, ``detection``, ``outputs`` and ``runtime`` (fragments
are re-encoded with the runtime's encoder). Never ``operations``, ``harness`` or ``cli``.
"""

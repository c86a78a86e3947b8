"""Operations around a running monitor: ``daemon`` (``streamembed monitor``: the poll loop and
its outage back-off), ``metrics`` (one Prometheus registry per daemon), ``health`` (/metrics,
/healthz, /readyz), ``webhook`` (announces new anomaly files), ``logs`` (JSON log lines),
``web`` (``streamembed serve``: the read-only web map over an output folder or bucket).

May import: everything below it (the foundation, ``sources``, ``detection``, ``outputs``,
``runtime``, ``deployment``, ``products``). Never ``harness`` or ``cli``.
"""

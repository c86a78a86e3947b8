"""Where the runtime runs: ``cluster`` (config -> a Client on a LocalCluster, SLURM or PBS
through dask-jobqueue, Kubernetes through the dask-kubernetes operator, or a scheduler address;
the encoder plugin registered on every worker) and ``deploy`` (``streamembed manifests``: the
Kubernetes objects written from config.yaml).

May import: the foundation and ``runtime`` (the worker plugin it registers). Never
``operations``, ``harness``, ``products`` or ``cli``.
"""

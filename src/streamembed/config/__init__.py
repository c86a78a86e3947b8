"""The one typed configuration object, loaded from config.yaml (+ env overrides) and validated once.

Environment overrides use ``STREAMEMBED__SECTION__KEY=value`` (value parsed as YAML), e.g.
``STREAMEMBED__CLUSTER__N_WORKERS=4``. Credentials never live here: see ``credentials.py``.

``base`` (what every section shares), ``data`` (source, ingest, model, store, stats),
``running`` (cluster, pipeline, daemon, serve, similarity) and ``loading`` (the root
``Config`` and how it is read); every name is importable from ``streamembed.config``.

May import: the rest of the foundation (``acquisition``, ``layout``, ``storage``); every part
of the package reads its settings from here, so nothing above the foundation.
"""

from __future__ import annotations

from .base import (
    DEFAULT_ALLOWED_HOSTS,
    ENV_PREFIX,
    HARNESS_SECTIONS,
    ConfigError,
    Section,
    SectionT,
)
from .data import (
    DETECTORS,
    Compression,
    Detector,
    IngestConfig,
    ModelConfig,
    SourceConfig,
    StatsConfig,
    StoreConfig,
    StoreDtype,
)
from .loading import (
    Config,
    env_overrides,
    load_config,
    load_section,
)
from .running import (
    ClusterConfig,
    DaemonConfig,
    PipelineConfig,
    ServeConfig,
    SimilarityConfig,
    TLSConfig,
    WebhookConfig,
    WorkerGroup,
)

__all__ = [
    "DEFAULT_ALLOWED_HOSTS",
    "DETECTORS",
    "ENV_PREFIX",
    "HARNESS_SECTIONS",
    "ClusterConfig",
    "Compression",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "Detector",
    "IngestConfig",
    "ModelConfig",
    "PipelineConfig",
    "Section",
    "SectionT",
    "ServeConfig",
    "SimilarityConfig",
    "SourceConfig",
    "StatsConfig",
    "StoreConfig",
    "StoreDtype",
    "TLSConfig",
    "WebhookConfig",
    "WorkerGroup",
    "env_overrides",
    "load_config",
    "load_section",
]

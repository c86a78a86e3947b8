"""The root ``Config`` (every section, the checks across sections, overrides) and how it is
read: config.yaml, then ``STREAMEMBED__SECTION__KEY=value`` variables, validated once; the
harness sections (``demo``, ``bench``) read alone with ``load_section``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from ..layout import OutputLayout
from ..storage import is_remote
from .base import ENV_PREFIX, HARNESS_SECTIONS, ConfigError, Section, SectionT
from .data import IngestConfig, ModelConfig, SourceConfig, StatsConfig, StoreConfig
from .running import (
    ClusterConfig,
    DaemonConfig,
    PipelineConfig,
    ServeConfig,
    SimilarityConfig,
)


class Config(Section):
    output: str = Field(
        "output",
        description="folder or object-store URL (s3://bucket/prefix, gs://, az://) of the "
        "embedding store, tile state and anomalies",
    )
    ledger: str | None = Field(
        None,
        description="local path of the SQLite ledger; default ledger.sqlite inside a local "
        "output (required when output is a URL)",
    )
    source: SourceConfig = SourceConfig()
    ingest: IngestConfig = IngestConfig()
    model: ModelConfig = ModelConfig()
    store: StoreConfig = StoreConfig()
    stats: StatsConfig = StatsConfig()
    cluster: ClusterConfig = ClusterConfig()
    pipeline: PipelineConfig = PipelineConfig()
    daemon: DaemonConfig = DaemonConfig()
    serve: ServeConfig = ServeConfig()
    similarity: SimilarityConfig = SimilarityConfig()

    @model_validator(mode="after")
    def _blocks_on_chunks(self) -> Config:
        chunk_px = self.store.chunk_cells * self.ingest.cell_size
        if self.ingest.block_px % chunk_px:
            raise ValueError(
                f"ingest.block_px={self.ingest.block_px} must be a multiple of "
                f"store.chunk_cells x ingest.cell_size = {chunk_px} px, so that blocks written "
                "at once never share a store chunk"
            )
        return self

    @model_validator(mode="after")
    def _ledger_is_local(self) -> Config:
        if self.ledger is not None and is_remote(self.ledger):
            raise ValueError(
                f"ledger={self.ledger}: the ledger is SQLite and must be a local path "
                "(the outputs may be a URL, the ledger may not)"
            )
        return self

    @property
    def layout(self) -> OutputLayout:
        """Where each output lives under ``output`` (and the ledger)."""
        return OutputLayout(self.output, self.ledger)

    def with_overrides(self, **dotted: Any) -> Config:
        """A copy with ``{"source.path": ...}``-style overrides applied and re-validated."""
        data = self.model_dump()
        for key, value in dotted.items():
            _set_dotted(data, key.split("."), value)
        return _validate(data, origin="command line")


def _set_dotted(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def _format_error(err: ValidationError, origin: str, root: type[BaseModel], prefix: str) -> str:
    lines = []
    for item in err.errors():
        key = ".".join([prefix] * bool(prefix) + [str(p) for p in item["loc"]]) or "(top level)"
        if item["type"] == "extra_forbidden":
            valid = _valid_keys(root, item["loc"][:-1])
            if root is Config and len(item["loc"]) == 1:
                valid = sorted([*valid, *HARNESS_SECTIONS])
            lines.append(f"{origin}: unknown key '{key}'; valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"{origin}: {key}: {item['msg']}")
    return "\n".join(lines)


def _valid_keys(model: type[BaseModel], parent: tuple[Any, ...]) -> list[str]:
    for part in parent:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def _validate(data: Mapping[str, Any], origin: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin, Config, "")) from None


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Dotted overrides from ``STREAMEMBED__A__B=value`` variables (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX):
            dotted = ".".join(name[len(ENV_PREFIX) :].lower().split("__"))
            out[dotted] = yaml.safe_load(raw)
    return out


def _read_document(
    path: str | Path | None, environ: Mapping[str, str] | None
) -> tuple[dict[str, Any], str]:
    """The file's sections with the environment overrides applied, and where they came from."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} not found; pass --config PATH or create it")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
        data = loaded
        origin = str(p)
    env = env_overrides(os.environ if environ is None else environ)
    for key, value in env.items():
        _set_dotted(data, key.split("."), value)
    if env:
        origin += " + STREAMEMBED__* environment"
    return data, origin


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate config.yaml; a missing default file means the built-in defaults.

    The harness sections (``demo``, ``bench``) may share the file; the runtime ignores them
    and their commands read them with :func:`load_section`.
    """
    data, origin = _read_document(path, environ)
    return _validate({k: v for k, v in data.items() if k not in HARNESS_SECTIONS}, origin)


def load_section(
    path: str | Path | None,
    name: str,
    model: type[SectionT],
    environ: Mapping[str, str] | None = None,
) -> SectionT:
    """One harness section of the same file (and ``STREAMEMBED__<NAME>__*``), validated alone."""
    data, origin = _read_document(path, environ)
    try:
        return model.model_validate(data.get(name) or {})
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin, model, name)) from None

"""What every config section shares: unknown keys are errors, values frozen; the one error a
config that cannot be used raises; the names the sections and the loader share."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict

ENV_PREFIX = "STREAMEMBED__"
# Sections of config.yaml that belong to the harness commands (demo, bench), not the runtime.
HARNESS_SECTIONS = ("demo", "bench")
# Where an item of a STAC API may point its assets beside the API's own host (sources/reach.py):
# the object stores of CDSE (the eodata bucket, its HTTPS hosts), Earth Search (the
# sentinel-cogs bucket) and Planetary Computer (Azure blob storage).
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = (
    "eodata",
    "*.dataspace.copernicus.eu",
    "sentinel-cogs",
    "sentinel-cogs.s3.us-west-2.amazonaws.com",
    "*.blob.core.windows.net",
)


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key and the fix."""


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo never silently means a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


SectionT = TypeVar("SectionT", bound=BaseModel)

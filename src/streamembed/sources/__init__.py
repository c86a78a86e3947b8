"""Where acquisitions come from: local STAC folders and the synthetic demo archive."""

from .local import SourceFailure, discover

__all__ = ["SourceFailure", "discover"]

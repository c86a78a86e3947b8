"""The web map (`streamembed serve`): a Starlette app over an output folder or bucket."""

from .app import create_app, serve
from .view import OutputView

__all__ = ["OutputView", "create_app", "serve"]

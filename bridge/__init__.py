"""bridge: a secure messaging and handover bridge between public agencies."""

from __future__ import annotations

from .errors import BridgeError

__all__ = ["BridgeError", "__version__"]

__version__ = "0.1.0"

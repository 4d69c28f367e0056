"""The installed version of Aegis, for the facade and for whatever reports it (spans)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("aegis-runtime")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

"""The executor interface, under the import path of the seed.

:class:`BaseExecutor` and :class:`ToolCallExecutor` live in
:mod:`aegis.runtime.executor` (the runtime calls them, and a lower layer
never imports a higher one); this module keeps ``from aegis.adapters.base
import BaseExecutor`` working.
"""

from __future__ import annotations

from aegis.runtime.executor import BaseExecutor, ToolCallExecutor

__all__ = ["BaseExecutor", "ToolCallExecutor"]

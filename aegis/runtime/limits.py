"""The metering step's former home, kept so that its import paths still work.

Rate limits, budgets and flow conditions are counted by
:mod:`aegis.runtime.metering` (:class:`Metering`, :class:`Deferred`); where
the counters live when a runtime is given no store is
:func:`~aegis.runtime._usage_store.usage_store_for`. The rules themselves
are parsed and compiled with the policy, in :mod:`aegis.core.limits`.
"""

from __future__ import annotations

from aegis.runtime._usage_store import usage_store_for
from aegis.runtime.metering import Deferred, Lease, Metering

__all__ = ["Deferred", "Lease", "Metering", "usage_store_for"]

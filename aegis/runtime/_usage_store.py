"""Where a runtime's usage counters live when it is given no ``usage_store``.

An :class:`~aegis.runtime.audit.AuditLogger` opened its stores together
(:func:`aegis.stores.open_stores`): its usage store shares the trail's SQLite
connection, or its PostgreSQL database, schema and credentials, so every
process writing that trail shares the counts. The metering step
(:mod:`aegis.runtime.metering`) calls :func:`usage_store_for` at the first
action: every action let through is noted there as a flow event, whatever the
policy, and limits, budgets and flow rules count there.
"""

from __future__ import annotations

from aegis.runtime.audit import AuditLogger
from aegis.stores.usage import MemoryUsageStore, UsageStore

__all__ = ["usage_store_for"]


def usage_store_for(audit: object) -> tuple[UsageStore, bool]:
    """The usage store beside ``audit``'s records, and whether the caller owns it.

    An :class:`~aegis.runtime.audit.AuditLogger` gives its stores' usage
    store, which closes with the audit logger (the caller does not own it).
    Any other audit (a logging audit) gets an in-memory store, counted in
    this process only, which the caller owns. Nothing else of the audit is
    looked at: a look-alike attribute never decides where counts go.
    """
    if isinstance(audit, AuditLogger):
        return audit.stores.usage, False
    return MemoryUsageStore(), True

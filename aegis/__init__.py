"""Aegis: a governance runtime for AI agents.

Every action an agent wants to take passes through a policy (auto, approve
or block, and a risk level), a human approval when the policy asks for one,
an executor, and a tamper-evident audit trail::

    from aegis import Action, Policy, Runtime

    policy = Policy.from_yaml("policy.yaml")
    async with Runtime(executor=my_executor, policy=policy) as runtime:
        result = await runtime.run_one(Action("read", "crm", {"id": 7}))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aegis._version import __version__
from aegis.adapters.base import BaseExecutor, ToolCallExecutor
from aegis.core.action import Action, FrozenDict
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.core.plan import ExecutionPlan
from aegis.core.policy import Policy, PolicyRule
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import (
    AegisError,
    ApprovalServiceError,
    AuditError,
    AuditOutcomeUnknown,
    ConfigurationError,
    PolicyError,
    StoreError,
    ToolBlockedError,
)
from aegis.runtime.approval import (
    ApprovalHandler,
    AutoApprovalHandler,
    CLIApprovalHandler,
    SuspendableApprovalHandler,
)
from aegis.runtime.approval_callback import CallbackApprovalHandler
from aegis.runtime.audit import AuditLogger, Head, VerifyReport
from aegis.runtime.audit_backend import AuditBackend
from aegis.runtime.audit_logging import LoggingAuditLogger
from aegis.runtime.engine import Runtime
from aegis.stores.sqlite.usage import SQLiteUsageStore
from aegis.stores.usage import MemoryUsageStore, UsageStore

if TYPE_CHECKING:
    from aegis.runtime.approval_remote import RemoteApprovalHandler


__all__ = [
    "Action",
    "AegisError",
    "Approval",
    "ApprovalHandler",
    "ApprovalOutcome",
    "ApprovalServiceError",
    "AuditBackend",
    "AuditError",
    "AuditLogger",
    "AuditOutcomeUnknown",
    "AutoApprovalHandler",
    "BaseExecutor",
    "CLIApprovalHandler",
    "CallbackApprovalHandler",
    "ConfigurationError",
    "ExecutionPlan",
    "FrozenDict",
    "Head",
    "LoggingAuditLogger",
    "MemoryUsageStore",
    "Policy",
    "PolicyDecision",
    "PolicyError",
    "PolicyRule",
    "RemoteApprovalHandler",
    "Result",
    "ResultStatus",
    "RiskLevel",
    "Runtime",
    "SQLiteUsageStore",
    "StoreError",
    "SuspendableApprovalHandler",
    "ToolBlockedError",
    "ToolCallExecutor",
    "UsageStore",
    "VerifyReport",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # RemoteApprovalHandler needs httpx (the server extra): import it on first use only.
    if name == "RemoteApprovalHandler":
        from aegis.runtime.approval_remote import RemoteApprovalHandler  # noqa: PLC0415

        return RemoteApprovalHandler
    raise AttributeError(f"module 'aegis' has no attribute {name!r}")

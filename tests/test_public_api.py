"""The public facade: `aegis` re-exports every public name, and the documented paths work."""

from __future__ import annotations

import importlib
import inspect

import pytest

import aegis


def test_all_is_sorted() -> None:
    """`aegis.__all__` is sorted, so additions land in one obvious place."""
    names = [n for n in aegis.__all__ if n != "__version__"]
    assert names == sorted(names)


def test_all_names_exist() -> None:
    """Every name in `aegis.__all__` is importable from `aegis`."""
    for name in aegis.__all__:
        assert hasattr(aegis, name), name


def test_all_is_complete() -> None:
    """Every public class defined in the package's public modules is in `aegis.__all__`."""
    modules = [
        "aegis.core.action",
        "aegis.core.decision",
        "aegis.core.plan",
        "aegis.core.policy",
        "aegis.core.result",
        "aegis.core.risk",
        "aegis.errors",
        "aegis.adapters.base",
        "aegis.runtime.approval",
        "aegis.runtime.approval_callback",
        "aegis.runtime.audit",
        "aegis.runtime.audit_backend",
        "aegis.runtime.audit_logging",
        "aegis.runtime.engine",
    ]
    missing = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isclass(obj) and name not in aegis.__all__:
                missing.append(f"{module_name}.{name}")
    assert missing == []


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("aegis.core.action", ["Action"]),
        ("aegis.core.policy", ["Approval", "Policy", "PolicyRule", "PolicyDecision"]),
        ("aegis.core.result", ["Result", "ResultStatus"]),
        ("aegis.core.risk", ["RiskLevel"]),
        ("aegis.core.plan", ["ExecutionPlan"]),
        ("aegis.adapters.base", ["BaseExecutor"]),
        ("aegis.runtime.engine", ["Runtime"]),
        ("aegis.runtime.approval", ["AutoApprovalHandler", "CLIApprovalHandler"]),
        ("aegis.runtime.approval_callback", ["CallbackApprovalHandler"]),
        ("aegis.runtime.audit", ["AuditLogger"]),
        ("aegis.runtime.audit_logging", ["LoggingAuditLogger"]),
    ],
)
def test_documented_import_paths(module: str, names: list[str]) -> None:
    """The import paths that code written for this kind of package uses resolve to our names."""
    mod = importlib.import_module(module)
    for name in names:
        assert getattr(mod, name) is getattr(aegis, name)


def test_policy_error_is_a_value_error() -> None:
    """PolicyError is both an AegisError and a ValueError, so either can be caught."""
    assert issubclass(aegis.PolicyError, aegis.AegisError)
    assert issubclass(aegis.PolicyError, ValueError)

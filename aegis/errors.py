"""Every exception Aegis raises on purpose.

    AegisError
    ├── PolicyError (also ValueError)   a policy file or rule is invalid
    ├── AuditError                      the audit trail cannot be read or written
    │   └── StoreError                  the store's database failed (SQLite, PostgreSQL)
    │       └── AuditOutcomeUnknown     an append was lost; it is not written again
    ├── ConfigurationError (also ValueError and TypeError)
    │                                   a setting or argument Aegis cannot use: the
    │                                   Runtime's, a store URL, the server's, a
    │                                   query's filters or expected head
    ├── ApprovalServiceError            the approval service refused or failed a request
    └── ToolBlockedError                a framework integration with on_block="raise"
                                        refused a tool call the policy blocks

A blocked or denied action is not an error: it is a :class:`~aegis.Result`
with status ``BLOCKED`` or ``DENIED``. Exceptions are for failures.

``ConfigurationError`` is a ``ValueError`` and a ``TypeError`` both, so
code written against the builtin exception a wrong value or a wrong type
used to raise keeps working; catch ``ConfigurationError`` (or
``AegisError``) to tell Aegis's refusals from a bug. The command line
reports it as one line and exits 2, the status of a usage error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aegis.core.result import Result

__all__ = [
    "AegisError",
    "ApprovalServiceError",
    "AuditError",
    "AuditOutcomeUnknown",
    "ConfigurationError",
    "PolicyError",
    "StoreError",
    "ToolBlockedError",
]


class AegisError(Exception):
    """Base class of all Aegis errors."""

    #: exit status the command line uses for this kind of error
    exit_code = 1


class PolicyError(AegisError, ValueError):
    """A policy is invalid.

    The message starts with ``file:line:`` when the policy came from a file
    and names the rule when one is at fault.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        rule: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.rule = rule
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        elif self.line is not None:
            where = f"line {self.line}: "
        rule = f"rule {self.rule!r}: " if self.rule else ""
        return f"{where}{rule}{self.message}"


class AuditError(AegisError):
    """The audit trail could not be opened, written or read."""


class StoreError(AuditError):
    """The database behind a store failed or is not one Aegis can use.

    The message names the database (a DSN with its password masked) and
    what to do; the database driver's exception is the ``__cause__``.
    """


class AuditOutcomeUnknown(StoreError):
    """An append's connection was lost and whether its records were written is not known.

    They were not written again: they may yet appear in the trail (its
    server may still commit them), once. Count the append as failed, and
    never write the same records again another way (that could write them
    twice); verify the trail to see what it holds.
    """


class ConfigurationError(AegisError, ValueError, TypeError):
    """Aegis was given a setting or argument it cannot use.

    A wrong object for the runtime, a store URL or option, a setting of the
    approval service (its TTL, OpenID sign-in, webhooks), a filter of an
    audit query or a malformed expected head. The message names the
    setting and what to give instead.
    """

    exit_code = 2


class ApprovalServiceError(AegisError):
    """The approval service refused a request, or could not be reached.

    ``status`` is the HTTP status the service answers with (401, 403, 404,
    409, 422, 503, ...) and ``code`` a short machine-readable name such as
    ``"not_pending"``; the message says what went wrong and what to do.
    """

    def __init__(self, message: str, *, status: int = 400, code: str = "bad_request") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ToolBlockedError(AegisError):
    """A tool call the policy blocks, raised by an integration with ``on_block="raise"``.

    The blocked call is recorded in the audit trail before this is raised;
    :attr:`result` is its ``BLOCKED`` Result, naming the rule and the reason.
    """

    def __init__(self, message: str, *, result: Result | None = None) -> None:
        super().__init__(message)
        self.result = result

"""What the audit trail stores about one action, besides the action itself.

:class:`DecisionStamp` carries what the runtime knew when it decided: the
time of the decide step, the digest of the policy that decided, and the
caller's ``context`` (a tool-call id, an agent's name, an MCP request id).
Each becomes a field of the action's audit records, covered by the chain hash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from aegis.errors import ConfigurationError

__all__ = ["ContextValue", "DecisionStamp", "check_context", "isoformat"]

#: a value of an audit ``context``: a JSON scalar
ContextValue = str | int | float | bool | None

#: ints wider than this lose precision in most JSON readers: pass them as text
_MAX_INT_BITS = 64


def isoformat(moment: datetime) -> str:
    """Return ``moment`` as a fixed-width ISO 8601 UTC string (naive means UTC).

    The fixed width keeps string comparison in time order, which the
    ``since``/``until`` filters rely on.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def check_context(context: Mapping[str, ContextValue] | None) -> dict[str, ContextValue] | None:
    """Return ``context`` as a plain dict of JSON scalars, or ``None`` for no context.

    Keys must be ``str`` and values exactly ``str``, ``int``, ``float``
    (finite), ``bool`` or ``None``: the context is stored and hashed as
    given, so a value that could print differently later is refused.

    Raises:
        ConfigurationError: ``context`` is not such a mapping; the message
            names the offending key.
    """
    if context is None:
        return None
    if not isinstance(context, Mapping):
        raise ConfigurationError(
            f"context must be a mapping of str to JSON scalars, got {type(context).__name__}; "
            'e.g. context={"tool_call_id": "call_1"}'
        )
    out: dict[str, ContextValue] = {}
    for key, value in context.items():
        if type(key) is not str:
            raise ConfigurationError(f"context keys must be str, got {type(key).__name__} {key!r}")
        kind = type(value)
        if kind is float and not math.isfinite(value):  # type: ignore[arg-type]  # float checked
            raise ConfigurationError(
                f"context[{key!r}] is {value!r}, which is not JSON; use a finite number or a string"
            )
        if kind is int and value.bit_length() > _MAX_INT_BITS:  # type: ignore[union-attr]  # int checked
            raise ConfigurationError(
                f"context[{key!r}] is an int wider than {_MAX_INT_BITS} bits; pass it as text"
            )
        if kind not in (str, int, float, bool, type(None)):
            raise ConfigurationError(
                f"context[{key!r}] is a {kind.__name__}; context values must be exactly "
                "str, int, float, bool or None (convert it first)"
            )
        out[key] = value
    return out or None


@dataclass(frozen=True, slots=True)
class DecisionStamp:
    """When and under which policy an action was decided, and the caller's context.

    ``decided_at`` is an ISO 8601 UTC time (see :func:`isoformat`);
    ``policy_digest`` is the deciding policy's ``digest`` when it has one;
    ``context`` is a checked context (see :func:`check_context`).
    """

    decided_at: str
    policy_digest: str | None = None
    context: Mapping[str, ContextValue] | None = None

    @classmethod
    def now(
        cls, policy: object = None, context: Mapping[str, ContextValue] | None = None
    ) -> DecisionStamp:
        """A stamp for a decision taken now by ``policy`` with a checked ``context``."""
        digest = getattr(policy, "digest", None)
        return cls(
            decided_at=isoformat(datetime.now(UTC)),
            policy_digest=digest if isinstance(digest, str) else None,
            context=context,
        )

"""OpenTelemetry spans of governed actions (the ``[otel]`` extra).

When the application has configured a tracer provider, every action the
runtime governs becomes one span, named as OpenTelemetry's semantic
conventions for generative AI name a tool execution (``execute_tool
NAME``, with ``gen_ai.operation.name``, ``gen_ai.tool.name``,
``gen_ai.tool.call.id`` and ``gen_ai.agent.name``), and Aegis's verdict
rides along under the ``aegis.`` prefix: the approval the policy asked
for, the risk, the rule, the reviewer, the status and the id of the audit
record. Blocked and denied calls get their span too, and the span is a
child of whatever span is current when the action is run, so it joins the
caller's trace; spans the executor starts are children of it.

Without OpenTelemetry nothing here runs and nothing is imported:
:func:`action_tracer` looks only at modules the application has already
imported, and a runtime without a tracer takes no step of this module.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from aegis.core.risk import RiskLevel

if TYPE_CHECKING:
    from aegis.core.decision import PolicyDecision
    from aegis.core.outcome import ApprovalOutcome
    from aegis.core.result import Result

__all__ = ["ActionTracer", "action_tracer", "remote_parent"]

#: the instrumentation scope spans are created under
SCOPE: Final = "aegis"
#: statuses whose span is marked as an error
_FAILED: Final = frozenset({"failed"})
#: each risk level's attribute value. Approvals and statuses are ``StrEnum``s,
#: read with ``str()``: an enum's ``.value`` and ``.name`` are Python-level
#: properties, a few percent of the span's cost each time they are read.
_RISK: Final = {level: level.name.lower() for level in RiskLevel}


def action_tracer(provider: Any = None) -> ActionTracer | None:
    """A tracer of ``provider``, or of the global provider when one is configured; else ``None``.

    Without ``provider`` nothing is imported: an application that traces
    has imported ``opentelemetry.trace`` already, and one that has not pays
    nothing.
    """
    if provider is not None:
        from aegis._version import __version__  # noqa: PLC0415  # see below

        return ActionTracer(provider.get_tracer(SCOPE, __version__))
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None  # nothing configured: spans would go nowhere
    from aegis._version import __version__  # noqa: PLC0415  # only once a provider exists

    return ActionTracer(provider.get_tracer(SCOPE, __version__))


class ActionTracer:
    """Starts and ends the span of each governed action.

    The runtime calls :meth:`start` once the policy has decided and
    :meth:`finish` with the result; ``start`` makes the span current until
    ``finish``.
    """

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import context, trace  # noqa: PLC0415  # imported by the app already

        self._tracer = tracer
        self._context = context
        self._trace = trace
        self._kind = trace.SpanKind.INTERNAL

    def start(
        self,
        decision: PolicyDecision,
        *,
        agent: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> tuple[Any, Any]:
        """Start the span of ``decision``'s action as the current span; return it and its token.

        Every attribute known now goes in with the span: the SDK takes a
        lock for each attribute set later.
        """
        action = decision.action
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": action.type,
            "aegis.target": action.target,
            "aegis.approval": str(decision.approval),
            "aegis.risk": _RISK[decision.risk_level],
            "aegis.rule": decision.matched_rule,
        }
        if context is not None:
            call_id = context.get("tool_call_id")
            if isinstance(call_id, str):
                attributes["gen_ai.tool.call.id"] = call_id
            if agent is None and isinstance(context.get("agent"), str):
                agent = context["agent"]
        if agent is not None:
            attributes["gen_ai.agent.name"] = agent
        span = self._tracer.start_span(
            f"execute_tool {action.type}", kind=self._kind, attributes=attributes
        )
        return span, self._context.attach(self._trace.set_span_in_context(span))

    def finish(
        self,
        span: Any,
        token: Any,
        result: Result | None,
        *,
        changed: PolicyDecision | None = None,
        human: ApprovalOutcome | None = None,
        record_id: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        """End the span with the result (``None`` when the run raised ``error``).

        ``changed`` is the decision when metering changed the policy's verdict
        (a limit reached); ``human`` is the approval step's answer.
        """
        try:
            if not span.is_recording():  # sampled out: nothing to fill in
                return
            attributes: dict[str, Any] = {}
            if changed is not None:
                attributes["aegis.approval"] = str(changed.approval)
                attributes["aegis.risk"] = _RISK[changed.risk_level]
                attributes["aegis.rule"] = changed.matched_rule
                if changed.reason:
                    attributes["aegis.reason"] = changed.reason
            status = None if result is None else str(result.status)
            if status is not None:
                attributes["aegis.status"] = status
            if human is not None:
                attributes["aegis.human_decision"] = human.human_decision()
                if human.reviewers:
                    attributes["aegis.reviewer"] = list(human.reviewers)
            if record_id is not None:
                attributes["aegis.audit.record_id"] = record_id
            failure = None
            if error is not None:
                span.record_exception(error)
                attributes["error.type"] = type(error).__qualname__
                failure = str(error)
            elif result is not None and status in _FAILED:
                attributes["error.type"] = _error_type(result.error)
                failure = result.error
            if len(attributes) > 2:
                span.set_attributes(attributes)
            else:  # the usual status and record id: the SDK checks a mapping
                for key, value in attributes.items():  # dearer than a lock a value
                    span.set_attribute(key, value)
            if failure is not None:
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, failure))
        finally:
            span.end()
            self._context.detach(token)


def _error_type(error: str | None) -> str:
    """The exception's name from a result's ``"Name: message"`` error text, or ``"_OTHER"``."""
    if error:
        name = error.partition(":")[0].strip()
        if name.isidentifier():
            return name
    return "_OTHER"


def remote_parent(carrier: object) -> contextlib.AbstractContextManager[None]:
    """Make the W3C trace context in ``carrier`` (an MCP request's ``_meta``) current.

    The span of the action decided inside then continues the caller's trace.
    A no-op when the carrier has no ``traceparent`` or the process does not
    trace (OpenTelemetry not imported).
    """
    if (
        not isinstance(carrier, Mapping)
        or not isinstance(carrier.get("traceparent"), str)
        or "opentelemetry.trace" not in sys.modules
    ):
        return contextlib.nullcontext()
    return _attached({k: carrier[k] for k in ("traceparent", "tracestate") if k in carrier})


@contextlib.contextmanager
def _attached(carrier: dict[str, Any]) -> Iterator[None]:
    from opentelemetry import context, propagate  # noqa: PLC0415  # the process traces

    fields = {key: value for key, value in carrier.items() if isinstance(value, str)}
    token = context.attach(propagate.extract(fields))
    try:
        yield
    finally:
        context.detach(token)

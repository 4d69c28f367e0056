"""Ask now, answer later: the approval service for suspended framework runs.

:class:`~aegis.runtime.approval_remote.RemoteApprovalHandler` asks and waits
in one call. A suspended framework run needs the two halves apart: the
request is created when the run suspends (so reviewers see it at once, and
nobody waits), and collected when the run is resumed, maybe hours later in
another process. :class:`RemoteSuspension` gives a RemoteApprovalHandler
those two halves, with the handler's own guarantees: the request must be
for exactly the action (its digest), an approval is collected once, a
timeout cancels the request on the service, and anything unclear denies.

It reuses the handler's HTTP plumbing (retries, the long poll's answer
settled into an ApprovalOutcome), so both paths keep one behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aegis.core.decision import PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.errors import ApprovalServiceError
from aegis.runtime.approval_remote import RemoteApprovalHandler, _GaveUp

__all__ = ["RemoteSuspension"]


class RemoteSuspension:
    """``submit_approval`` and ``collect_approval`` for a RemoteApprovalHandler."""

    def __init__(self, handler: RemoteApprovalHandler) -> None:
        self.handler = handler

    async def submit_approval(
        self, decision: PolicyDecision, *, context: Mapping[str, Any] | None = None
    ) -> str:
        """Create (or re-attach to) the pending request for ``decision``; return its id."""
        handler = self.handler
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(handler.timeout, 30.0)
        body = handler._request_body(decision)
        try:
            request = handler._json(
                await handler._send("POST", "/api/v1/approvals", deadline, json=body)
            )
        except _GaveUp as exc:
            raise ApprovalServiceError(str(exc), status=503, code="unreachable") from exc
        request_id = str(request.get("id"))
        problem = handler._mismatch(request, decision.action)
        if problem is not None:
            await handler._cancel(request_id, f"refused by the agent: {problem}")
            raise ApprovalServiceError(problem, status=502, code="digest_mismatch")
        return request_id

    async def collect_approval(self, request_id: str, decision: PolicyDecision) -> ApprovalOutcome:
        """Wait (up to the handler's timeout) for the reviewers' verdict on ``request_id``."""
        handler = self.handler
        loop = asyncio.get_running_loop()
        deadline = loop.time() + handler.timeout
        action = decision.action
        try:
            request = handler._json(
                await handler._send("GET", f"/api/v1/approvals/{request_id}", deadline)
            )
            problem = handler._mismatch(request, action)
            if problem is not None:
                return ApprovalOutcome(False, reason=problem, request_id=request_id)
            while request.get("status") == "pending":
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _GaveUp(f"no decision within {handler.timeout:g}s")
                wait = min(handler.poll, remaining)
                request = handler._json(
                    await handler._send(
                        "GET",
                        f"/api/v1/approvals/{request_id}/wait",
                        deadline,
                        params={"timeout": f"{wait:.3f}"},
                        read_timeout=wait + 10.0,
                    )
                )
            return await handler._settle(request, action, deadline)
        except _GaveUp as exc:
            await handler._cancel(request_id, f"the agent stopped waiting: {exc}")
            return ApprovalOutcome(False, reason=f"{exc}; request cancelled", request_id=request_id)
        except ApprovalServiceError as exc:
            # Denied here; a reviewer's late yes must not leave an approval behind.
            await handler._cancel(request_id, f"the agent stopped waiting: {exc}")
            return ApprovalOutcome(
                False, reason=f"the approval service refused: {exc}", request_id=request_id
            )

"""Ask now, answer later: the approval service for suspended framework runs.

:class:`~aegis.runtime.approval_remote.RemoteApprovalHandler` asks and waits
in one call. A suspended framework run needs the two halves apart: the
request is created when the run suspends (so reviewers see it at once, and
nobody waits), and collected when the run is resumed, maybe hours later in
another process. :class:`RemoteSuspension` gives a RemoteApprovalHandler
those two halves through the handler's public steps (``file``, ``follow``)
and its :class:`~aegis.client.ApprovalClient`, so both paths keep one
behaviour: the request must be for exactly the action (its digest) under
terms no weaker than the policy's, an approval is collected once, a refusal
fails fast, a timeout cancels the request on the service, and anything
unclear denies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aegis.core.decision import PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.errors import ApprovalServiceError
from aegis.runtime.approval_remote import RemoteApprovalHandler

__all__ = ["RemoteSuspension"]


class RemoteSuspension:
    """``submit_approval`` and ``collect_approval`` for a RemoteApprovalHandler."""

    def __init__(self, handler: RemoteApprovalHandler) -> None:
        self.handler = handler

    async def submit_approval(
        self, decision: PolicyDecision, *, context: Mapping[str, Any] | None = None
    ) -> str:
        """Create (or re-attach to) the pending request for ``decision``; return its id.

        Raises:
            ApprovalServiceError: refused, unreachable, or an answer for
                another action or weaker terms.
        """
        handler = self.handler
        deadline = asyncio.get_running_loop().time() + min(handler.timeout, 30.0)
        request = await handler.file(decision, deadline)
        return str(request.get("id"))

    async def collect_approval(self, request_id: str, decision: PolicyDecision) -> ApprovalOutcome:
        """Wait (up to the handler's timeout) for the reviewers' verdict on ``request_id``."""
        handler = self.handler
        deadline = asyncio.get_running_loop().time() + handler.timeout
        try:
            request = await handler.client.get(request_id, deadline=deadline)
        except ApprovalServiceError as exc:
            # Denied here; a reviewer's late yes must not leave an approval behind.
            await handler.client.cancel(request_id, f"the agent stopped waiting: {exc}")
            return ApprovalOutcome(
                False, reason=f"the approval service refused: {exc}", request_id=request_id
            )
        problem = handler.mismatch(request, decision)
        if problem is not None:
            return ApprovalOutcome(False, reason=problem, request_id=request_id)
        try:
            return await handler.follow(request, decision, deadline)
        except ApprovalServiceError as exc:  # follow() cancelled it already
            return ApprovalOutcome(
                False, reason=f"the approval service refused: {exc}", request_id=request_id
            )

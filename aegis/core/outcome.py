"""What an approval handler answers: a yes or no, and who said it.

A handler may answer ``True`` or ``False``; richer handlers (the approval
service, a framework's human-in-the-loop) answer an :class:`ApprovalOutcome`
so that the audit trail names the reviewers, their comment, and the grant
or request that carried the answer.

The runtime lets an approved action run only when the outcome is bound to
it: ``digest``, when given, must equal :func:`~aegis.core.action.action_digest`
of the action about to run.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ApprovalOutcome", "human_text"]


@dataclass(frozen=True, slots=True)
class ApprovalOutcome:
    """A handler's answer with its provenance.

    Args:
        approved: ``True`` lets the action run; anything else denies it.
        reviewers: the names of the people who decided, in order.
        comment: what the deciding reviewer wrote, if anything.
        reason: why the action was denied when no reviewer said no
            (expired, timed out, cancelled, the service unreachable).
        request_id: the approval request that carried the answer.
        grant: the grant that approved without asking, if one did.
        digest: the digest of the action that was approved; the runtime
            refuses to run an action whose digest differs.

    Example::

        ApprovalOutcome(True, reviewers=("alice",), request_id="apr_12", digest=d)
    """

    approved: bool
    reviewers: tuple[str, ...] = ()
    comment: str | None = None
    reason: str | None = None
    request_id: str | None = None
    grant: str | None = None
    digest: str | None = None

    def __bool__(self) -> bool:
        return self.approved is True

    def human_decision(self) -> str:
        """The audit trail's ``human_decision`` text for this outcome.

        ``"approved by alice, bob"``, ``"approved by grant g1 (from alice)"``,
        ``"denied by carol: not today"`` or ``"denied: request expired"``.
        """
        verdict = "approved" if self.approved is True else "denied"
        if self.grant is not None:
            text = f"{verdict} by grant {self.grant}"
            if self.reviewers:
                text += f" (from {', '.join(self.reviewers)})"
        elif self.reviewers:
            text = f"{verdict} by {', '.join(self.reviewers)}"
        else:
            text = verdict
        if self.approved is not True and self.reason:
            text += f": {self.reason}"
        elif self.comment:
            text += f": {self.comment}"
        if self.request_id is not None:
            text += f" [request {self.request_id}]"
        return text


def human_text(answer: str | ApprovalOutcome | None) -> str | None:
    """The audit trail's ``human_decision`` for ``answer``: an outcome's text, or the text given."""
    if isinstance(answer, ApprovalOutcome):
        return answer.human_decision()
    return answer

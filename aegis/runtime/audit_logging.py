"""An audit backend that writes to Python's ``logging``, for existing log pipelines.

Each action becomes one JSON line on the ``aegis.audit`` logger, at a level
that follows its risk, so that handlers and filters you already have decide
where it goes. The latest records are also kept in memory (bounded) for
:meth:`LoggingAuditLogger.get_log` and :meth:`LoggingAuditLogger.export_jsonl`.
There is no hash chain: use :class:`~aegis.runtime.audit.AuditLogger` when
the trail must be tamper-evident.

Example::

    logging.basicConfig(level=logging.INFO)
    runtime = Runtime(executor=..., policy=..., audit_logger=LoggingAuditLogger())
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, Final

from aegis.core.decision import PolicyDecision
from aegis.core.filters import Filters
from aegis.core.outcome import ApprovalOutcome, human_text
from aegis.core.record import (
    RECORD_FIELDS,
    ContextValue,
    RecordDraft,
    decision_stamp,
    final_draft,
)
from aegis.core.result import Result
from aegis.core.risk import RiskLevel
from aegis.errors import AuditError, ConfigurationError
from aegis.runtime.audit_backend import (
    RecordReader,
    Subscriber,
    SubscriberList,
    interrupted_result,
)

__all__ = ["LoggingAuditLogger"]

#: the level of a record's log line, by risk
LEVELS: Final[dict[str, int]] = {
    RiskLevel.LOW.name: logging.DEBUG,
    RiskLevel.MEDIUM.name: logging.INFO,
    RiskLevel.HIGH.name: logging.WARNING,
    RiskLevel.CRITICAL.name: logging.ERROR,
}

_FIELDS: Final = RECORD_FIELDS[:-2]  # no prev_hash / hash: this log is not chained
_JSON: Final = frozenset({"action_params", "result_data", "context"})


class LoggingAuditLogger(RecordReader):
    """Log one JSON record per action on ``aegis.audit`` (or ``logger``).

    Levels follow risk: LOW is DEBUG, MEDIUM INFO, HIGH WARNING, CRITICAL
    ERROR. The last ``max_records`` records stay in memory for reading back.

    Args:
        logger: where to log; defaults to ``logging.getLogger("aegis.audit")``.
        max_records: how many records to keep in memory (older ones are dropped
            from memory, not from the log).
    """

    def __init__(self, logger: logging.Logger | None = None, *, max_records: int = 10_000) -> None:
        if max_records < 0:
            raise ConfigurationError(f"max_records must be 0 or more, not {max_records}")
        self.logger = logger if logger is not None else logging.getLogger("aegis.audit")
        self._records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self._next_id = 1
        self._lock = threading.Lock()
        self._subscribers = SubscriberList()
        self._closed = False

    def __repr__(self) -> str:
        return f"<LoggingAuditLogger {self.logger.name!r} {len(self._records)} records>"

    def _check_open(self) -> None:
        if self._closed:
            raise AuditError("this LoggingAuditLogger is closed; create a new one")

    def log(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        result: Result | None = None,
        human_decision: str | ApprovalOutcome | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int:
        """Log one finished record and return its id (1, 2, ... per logger)."""
        self._check_open()
        human = human_text(human_decision)
        stamp = decision_stamp(context, decided_at, policy_digest)
        try:
            draft = final_draft(session_id, decision, result, human_decision=human, stamp=stamp)
        except BaseException as exc:  # reading the result said "stop" (see AuditBackend.record)
            if result is not None:
                ended = interrupted_result(result, exc)
                self._keep(
                    final_draft(session_id, decision, ended, human_decision=human, stamp=stamp)
                )
            raise
        return self._keep(draft)

    def _keep(self, draft: RecordDraft) -> int:
        """Keep ``draft`` as the next record and log it; its id."""
        with self._lock:
            record_id = self._next_id
            self._next_id += 1
            record = {
                name: (json.loads(value) if name in _JSON and isinstance(value, str) else value)
                for name, value in zip(_FIELDS, (record_id, *draft), strict=True)
            }
            self._records.append(record)
        level = LEVELS.get(draft.risk_level, logging.WARNING)
        if self.logger.isEnabledFor(level):
            self.logger.log(
                level,
                "%s",
                json.dumps(record, ensure_ascii=False, separators=(",", ":")),
                extra={"aegis_audit": record},
            )
        self._subscribers.notify(record)
        return record_id

    async def record_start(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        human_decision: str | ApprovalOutcome | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int | None:
        """Log a DEBUG line that the action is starting; there is no token, so ``None``."""
        self._check_open()
        if self.logger.isEnabledFor(logging.DEBUG):
            action = decision.action
            self.logger.debug(
                "started %s -> %s (session %s, rule %r)",
                action.type,
                action.target,
                session_id,
                decision.matched_rule,
            )
        return None

    async def record(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        result: Result,
        human_decision: str | ApprovalOutcome | None = None,
        start_token: int | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int:
        """Log the final record of an action and return its id."""
        return self.log(
            session_id,
            decision,
            result=result,
            human_decision=human_decision,
            context=context,
            decided_at=decided_at,
            policy_digest=policy_digest,
        )

    def _select(
        self, filters: Filters, after_id: int | None, limit: int | None
    ) -> Iterator[dict[str, Any]]:
        with self._lock:
            snapshot = list(self._records)
        if limit is not None and limit <= 0:
            return
        found = 0
        for record in snapshot:
            if after_id is not None and record["id"] <= after_id:
                continue
            if filters.matches(record):
                yield record
                found += 1
                if found == limit:
                    return

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback(record)`` after each new record; its exceptions are logged."""
        self._subscribers.add(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        self._subscribers.remove(callback)

    def close(self) -> None:
        """Stop accepting records; the kept ones stay readable. Idempotent."""
        self._closed = True

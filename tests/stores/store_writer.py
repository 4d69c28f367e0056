"""A child process appending start and final records to a store until killed.

Usage: ``python store_writer.py URL [DURABILITY]``; prints the id of each
final record once its append returned.
"""

from __future__ import annotations

import itertools
import sys

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.record import final_draft, start_draft
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.stores import open_store


def main() -> None:
    """Append forever, printing each committed final record's id."""
    options = {"durability": sys.argv[2]} if len(sys.argv) > 2 else {}
    store = open_store(sys.argv[1], **options)
    for n in itertools.count():
        d = PolicyDecision(Action("write", "crm", {"n": n}), RiskLevel.LOW, Approval.AUTO, "w")
        [start] = store.append([start_draft("killed", d)])
        result = Result(d.action, ResultStatus.SUCCESS)
        [done] = store.append([final_draft("killed", d, result, start_id=start.id)])
        print(done.id, flush=True)


if __name__ == "__main__":
    main()

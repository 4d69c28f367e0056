"""Helpers for the command line tests: a policy and recorded audit sessions."""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

import yaml
from click.testing import CliRunner
from click.testing import Result as CliResult

from aegis.cli import cli
from aegis.core.action import Action
from aegis.core.policy import Policy
from aegis.core.result import Result, ResultStatus
from aegis.runtime.audit import AuditLogger

#: the ``invoke`` fixture of conftest.py: runs ``aegis ARGS...``, returns Click's result.
#: Imported from here, never from conftest: with several test folders in one run,
#: another folder's conftest.py may hold that module name.
Invoke = Callable[..., CliResult]

POLICY = """\
version: "1"
defaults: {risk_level: medium, approval: block}
rules:
  - name: reads
    match: {type: "read*"}
    risk_level: low
    approval: auto
  - name: refunds
    match: {type: refund}
    risk_level: high
    approval: approve
  - name: no_deletes
    match: {type: delete}
    risk_level: critical
    approval: block
"""

#: the recorded session: (action, status, human decision)
SESSION: list[tuple[Action, ResultStatus, str | None]] = [
    (Action("read", "crm", {"id": 1}), ResultStatus.SUCCESS, None),
    (
        Action("refund", "stripe", {"amount": 40}, "refund order 7"),
        ResultStatus.SUCCESS,
        "approved",
    ),
    (Action("delete", "crm", {"id": 1}), ResultStatus.BLOCKED, None),
    (Action("read", "billing"), ResultStatus.SUCCESS, None),
]


def write_session(
    db_path: Path,
    entries: Sequence[tuple[Action, ResultStatus, str | None]] = SESSION,
    *,
    policy_text: str = POLICY,
    session_id: str = "session-1",
) -> None:
    """Record ``entries`` in ``db_path`` as the runtime would, under ``policy_text``."""
    policy = Policy.from_dict(yaml.safe_load(policy_text))
    with AuditLogger(db_path) as audit:
        for action, status, human in entries:
            audit.log(
                session_id,
                policy.evaluate(action),
                result=Result(action, status),
                human_decision=human,
            )


def edit_database(db_path: Path, sql: str) -> None:
    """Run ``sql`` on the audit database with sqlite3, as someone editing it by hand would."""
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(sql)


def run_as_reader(args: list[str]) -> tuple[int, str]:
    """``aegis ARGS`` as a user without root's rights: exit code and output.

    Run as root, the command runs in a forked child that has become ``nobody``
    for good (root reads and writes anything); load the command's module first.
    """
    if os.geteuid() != 0:
        result = CliRunner().invoke(cli, args)
        return result.exit_code, result.output
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root for good, run, report, leave without cleanup
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result = CliRunner().invoke(cli, args)
            report = {"code": result.exit_code, "output": result.output}
        except BaseException as exc:  # everything goes back to the parent
            report = {"code": -1, "output": f"child failed: {exc!r}"}
        with os.fdopen(write, "w") as stream:
            json.dump(report, stream)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as stream:
        text = stream.read()
    os.waitpid(pid, 0)
    report = json.loads(text)
    return int(report["code"]), str(report["output"])

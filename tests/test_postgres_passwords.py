"""Every PostgreSQL entry point against a server that checks passwords (scram-sha-256).

The right password works in each form the README names (in the URL,
percent-encoded; a libpq string; PGPASSWORD; a passfile), and a wrong or
missing one stops the entry point with one error naming the problem and
the database, never the password: not on stdout or stderr, not in an
exception or a log, not in the audit trail.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from local_postgres import Login
from psycopg import sql

from aegis import Action, AuditLogger, Policy, ResultStatus, Runtime
from aegis.core.limits import Charge
from aegis.errors import ConfigurationError, StoreError
from aegis.stores import open_stores
from aegis.stores.postgres.usage import PostgresUsageStore

ROOT = Path(__file__).resolve().parent.parent
FILES_SERVER = ROOT / "tests" / "mcp" / "files_server.py"

#: a wrong password as awkward to mask as the right one
WRONG_PASSWORD = "wr0ng p@ss:/%25 Ä"

POLICY = Policy.from_dict(
    {
        "rules": [
            {
                "name": "refunds",
                "match": {"type": "refund"},
                "approval": "auto",
                "limit": {"max": 5, "per": "1h"},
                "on_exceed": {"approval": "block"},
            }
        ]
    }
)

MCP_POLICY = """\
version: "1"
defaults: {risk_level: medium, approval: block}
rules:
  - name: reads
    match: {type: read}
    approval: auto
"""


@pytest.fixture
def schema() -> str:
    """A schema name of the test's own in the login's database (created by the store)."""
    return f"pw_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def no_ambient_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PGPASSWORD, and a passfile that does not exist: only what a test gives counts."""
    for name in ("PGPASSWORD", "PGPASSFILE", "AEGIS_DB", "AEGIS_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-passfile"))


def secret_forms(password: str) -> list[str]:
    """How a password could show up in text: as written, percent-encoded, its distinct tail."""
    return [password, quote(password, safe=""), password[-6:]]


def assert_hidden(password: str, *texts: str) -> None:
    """No text holds the password in any of its forms."""
    for text in texts:
        for form in secret_forms(password):
            assert form not in text, f"{form!r} shown in {text!r}"


def trail_text(login: Login, schema: str) -> str:
    """Every row of every table in ``schema``, as text: all the store wrote."""
    rows: list[str] = []
    with psycopg.connect(login.url(), autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT t::text FROM {}.{} AS t").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            rows.extend(row[0] for row in conn.execute(query))
    return "\n".join(rows)


def record_one_refund(url: str, schema: str) -> tuple[ResultStatus, int]:
    """Run one refund through a Runtime whose trail and limits are at ``url``."""
    ran: list[Action] = []

    async def run() -> ResultStatus:
        with AuditLogger(url, schema=schema) as audit:
            async with Runtime(
                executor=lambda action: ran.append(action) or "ok",
                policy=POLICY,
                audit_logger=audit,
            ) as runtime:
                result = await runtime.run_one(Action("refund", "billing", {"amount": 3}))
            return result.status

    return asyncio.run(run()), len(ran)


def count_records(login: Login, schema: str) -> int:
    """How many records the trail in ``schema`` holds, after checking its chain."""
    with AuditLogger(login.url(), schema=schema, create=False, readonly=True) as audit:
        assert audit.verify().ok
        return len(list(audit.get_log()))


def assert_names_the_database(login: Login, text: str) -> None:
    """The error names the host, port and database it could not open."""
    for part in ("127.0.0.1", str(login.port), login.dbname):
        assert part in text


# ---------------------------------------------------------------- the library


def libpq_string(login: Login, password: str, host: str = "127.0.0.1") -> str:
    """A libpq key=value string, the password quoted and escaped as libpq wants."""
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    return (
        f"host={host} port={login.port} dbname={login.dbname} user={login.user} "
        f"password='{escaped}'"
    )


def passfile_line(login: Login) -> str:
    r"""The login's line of a .pgpass file (':' and '\' escaped by a backslash)."""
    password = login.password.replace("\\", "\\\\").replace(":", "\\:")
    return f"127.0.0.1:{login.port}:{login.dbname}:{login.user}:{password}\n"


#: each way the README says a password may be given
PASSWORD_FORMS = ("url", "url-query", "libpq-string", "libpq-unix-socket", "PGPASSWORD", "passfile")


def password_given(form: str, login: Login, env: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The location to open with the login's password given as ``form`` says."""
    if form == "url":
        return login.url()
    if form == "url-query":
        return f"{login.url_without_password()}?password={quote(login.password, safe='')}"
    if form == "libpq-string":
        return libpq_string(login, login.password)
    if form == "libpq-unix-socket":
        return libpq_string(login, login.password, host=login.socket_dir)
    if form == "PGPASSWORD":
        env.setenv("PGPASSWORD", login.password)
        return login.url_without_password()
    passfile = tmp_path / "pgpass"
    passfile.write_text(passfile_line(login), encoding="utf-8")
    passfile.chmod(0o600)  # libpq ignores a passfile others may read
    env.setenv("PGPASSFILE", str(passfile))
    return login.url_without_password()


@pytest.mark.parametrize("form", PASSWORD_FORMS)
@pytest.mark.usefixtures("no_ambient_password")
def test_the_right_password_runs_an_action_in_each_form(
    password_postgres: Login,
    schema: str,
    form: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Given in any documented form, the password opens the trail and the limits' counters."""
    url = password_given(form, password_postgres, monkeypatch, tmp_path)
    assert record_one_refund(url, schema) == (ResultStatus.SUCCESS, 1)
    assert count_records(password_postgres, schema) == 1
    assert_hidden(password_postgres.password, trail_text(password_postgres, schema))


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda login: login.url(WRONG_PASSWORD), id="url"),
        pytest.param(lambda login: libpq_string(login, WRONG_PASSWORD), id="libpq-string"),
        pytest.param(lambda login: login.url(login.password[:-1]), id="url-one-letter-short"),
        # libpq takes a '?' or '#' before the '@' as part of the password
        pytest.param(
            lambda login: login.url_without_password().replace("@", ":wr?ng#pw@", 1),
            id="url-unencoded-question-mark",
        ),
    ],
)
@pytest.mark.usefixtures("no_ambient_password")
def test_a_wrong_password_stops_the_first_action_before_it_runs(
    password_postgres: Login,
    schema: str,
    spelling: Callable[[Login], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One StoreError naming the refused login and the database; nothing runs or is lost."""
    assert record_one_refund(password_postgres.url(), schema) == (ResultStatus.SUCCESS, 1)
    url = spelling(password_postgres)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError) as caught:
        record_one_refund(url, schema)
    text = str(caught.value)
    assert "wrong user name or password" in text
    assert_names_the_database(password_postgres, text)
    shown = "".join(traceback.format_exception(caught.value)) + caplog.text
    assert_hidden(WRONG_PASSWORD, shown)
    assert "wr?ng#pw" not in shown
    assert_hidden(password_postgres.password, shown)
    assert count_records(password_postgres, schema) == 1  # the earlier action's, intact


@pytest.mark.parametrize("password", ["p@ss/w0rd", "p@ss@w0rd", "pa/ss@w0rd", "pass/w0rd"])
def test_an_unencoded_at_or_slash_in_the_password_is_refused_unshown(
    password_postgres: Login, password: str
) -> None:
    """libpq would take part of such a password for the host; the URL is refused, masked."""
    url = f"postgresql://aegis:{password}@127.0.0.1:{password_postgres.port}/agents"
    with pytest.raises(ConfigurationError, match="percent-encode") as caught:
        open_stores(url).audit.check()
    text = str(caught.value)
    assert f"postgresql://aegis:***@127.0.0.1:{password_postgres.port}/agents" in text
    for part in ("p@ss", "ss/w", "w0rd"):
        assert part not in text


@pytest.mark.usefixtures("no_ambient_password")
def test_no_password_at_all_says_the_server_wants_one(
    password_postgres: Login, schema: str
) -> None:
    """A DSN without a password, and none in the environment, is told where to give one."""
    with pytest.raises(StoreError) as caught:
        record_one_refund(password_postgres.url_without_password(), schema)
    text = str(caught.value)
    assert_names_the_database(password_postgres, text)
    assert "PGPASSWORD" in text  # the hint names the ways to give it
    assert "server is running" not in text  # it is, and it answered


@pytest.mark.usefixtures("no_ambient_password")
def test_the_usage_store_alone_refuses_a_wrong_password(
    password_postgres: Login, schema: str
) -> None:
    """The limits' counters opened on their own fail clearly, and count nothing."""
    charge = Charge(bucket="b", amount=1, maximum=5, window=3600.0)
    with PostgresUsageStore(password_postgres.url(), schema=schema) as usage:
        assert usage.acquire([charge], 1000.0, reserve=True, over=False).used == (0,)
    with (
        PostgresUsageStore(password_postgres.url(WRONG_PASSWORD), schema=schema) as wrong,
        pytest.raises(StoreError, match="password") as caught,
    ):
        wrong.acquire([charge], 1001.0, reserve=True, over=False)
    assert_names_the_database(password_postgres, str(caught.value))
    assert_hidden(WRONG_PASSWORD, str(caught.value))
    with PostgresUsageStore(password_postgres.url(), schema=schema) as usage:
        assert usage.acquire([charge], 1002.0, reserve=False, over=False).used == (1,)


@pytest.mark.usefixtures("no_ambient_password")
def test_open_stores_opens_all_three_stores_with_the_password(
    password_postgres: Login, schema: str
) -> None:
    """open_stores hands the audit store's password to the usage and approval stores."""
    with open_stores(password_postgres.url(), schema=schema) as stores:
        stores.audit.check()
        assert stores.approvals.list_tokens() == []
        assert stores.usage.latest_event("nobody", None) is None
        assert_hidden(password_postgres.password, repr(stores), stores.where)

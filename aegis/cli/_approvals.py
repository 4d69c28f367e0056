"""``aegis approvals``: list, show and decide approval requests from a terminal.

A client of the approval service's JSON API (``/api/v1/approvals``): it
says exactly what the service says. Exit status 0 when done, 1 when the
service refused (unknown id, wrong role, already decided, expired, own
request, unreachable), 2 for usage errors (a missing token, a bad option,
a body the service calls malformed).

Size: one module per command group: list, show and decide share the client, the
token and the terminal rendering of a request.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn

import click

from aegis.cli._app import CheckFailed
from aegis.cli._output import (
    RISK_STYLES,
    Lines,
    Styled,
    TableCell,
    emit_json,
    inert,
    info,
    is_terminal,
    json_text,
    note,
    print_table,
    success,
    use_color,
)
from aegis.cli._params import format_option, secret_option
from aegis.core._text import counted
from aegis.errors import ApprovalServiceError

if TYPE_CHECKING:
    from aegis.client import ApprovalClient

__all__ = ["approvals"]

DEFAULT_URL = "http://127.0.0.1:8700"

STATUSES = ("pending", "approved", "denied", "expired", "cancelled", "all")
SORTS = ("newest", "expiring", "risk")
#: highest first
RISKS = ("critical", "high", "medium", "low")

STATUS_STYLES = {
    "pending": "yellow",
    "approved": "green",
    "denied": "red",
    "expired": "dim",
    "cancelled": "dim",
}

LIST_COLUMNS = ("Id", "Created", "Action", "Risk", "Rule", "Agent", "Status", "Expires")

#: seconds one call to the service may take; a decision is one short request
TIMEOUT = 30.0


class _Refused(CheckFailed):
    """The service refused, or could not be reached (exit status 1)."""


class _Client:
    """The command's calls through :class:`~aegis.client.ApprovalClient`, errors as exits."""

    def __init__(self, url: str, token: str) -> None:
        try:
            from aegis.client import ApprovalClient  # noqa: PLC0415  # needs httpx
        except ImportError as exc:  # pragma: no cover - the [server] extra is absent
            raise click.ClickException(
                "aegis approvals needs httpx: pip install 'aegis-runtime[server]'"
            ) from exc
        self._url = url.rstrip("/")
        self._client = ApprovalClient(self._url, token=token, timeout=TIMEOUT)

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        """Nothing to close: each call opens and closes its own connection."""

    def run(self, call: Callable[[ApprovalClient], Awaitable[Any]]) -> Any:
        """Run one call of the client; the service's refusals become exit statuses."""
        import httpx  # noqa: PLC0415  # present with the client

        from aegis.client import Unreachable  # noqa: PLC0415  # same

        async def once() -> Any:
            try:
                return await call(self._client)
            finally:
                await self._client.aclose()

        try:
            return asyncio.run(once())
        except httpx.InvalidURL as exc:
            raise click.BadParameter(f"{self._url!r}: {exc}", param_hint="'--url'") from exc
        except Unreachable as exc:
            raise _Refused(
                f"cannot reach the approval service at {self._url}: {inert(str(exc))}; "
                "is `aegis serve` running there? (--url or AEGIS_URL)"
            ) from exc
        except ApprovalServiceError as exc:
            _raise_for(exc.status, exc.code, str(exc), self._url)
            raise  # pragma: no cover  # _raise_for always raises


def _raise_for(status: int, code: str, message: str, url: str) -> None:
    message = inert(message)
    if status == 401:
        message = f"{message} (check AEGIS_TOKEN or --token-file)"
    elif status == 404 and code == "bad_answer":
        message = f"{url} answered 404: is it an Aegis approval service?"
    if status in {400, 422}:
        raise click.UsageError(f"the service refused the request as malformed: {message}")
    raise _Refused(f"refused ({status}): {message}")


def _unwrap_list(body: Any) -> list[Mapping[str, Any]]:
    if isinstance(body, Mapping):
        for key in ("approvals", "items", "requests"):
            if isinstance(body.get(key), list):
                body = body[key]
                break
    if not isinstance(body, list):
        raise _Refused("the service answered something that is not a list of requests")
    return [item for item in body if isinstance(item, Mapping)]


def _action_text(request: Mapping[str, Any]) -> str:
    action = request.get("action")
    if not isinstance(action, Mapping):
        return "?"
    return f"{action.get('type')}:{action.get('target')}"


def _short_time(value: Any) -> str:
    text = str(value or "")
    return text[:19].replace("T", " ")


#: a terminal narrower than this shows short ids (any unambiguous prefix is accepted)
WIDE: Final = 140
#: a terminal narrower than this names the agent under the action, not in a column
NARROW: Final = 110
#: the columns of the table on a terminal; Action and Rule carry the summary and why
TERMINAL_COLUMNS: Final = ("Id", "Risk", "Action", "Rule / why", "Agent", "Left")
#: hex digits of a short id: a collision among a few thousand requests is unlikely,
#: and a longer prefix is shown wherever two would read alike
SHORT_ID: Final = 8


def short_ids(ids: Sequence[str]) -> dict[str, str]:
    """Each id cut to its shortest start (``apr_`` and 8 digits or more) unique among ``ids``."""
    shown: dict[str, str] = {}
    for request_id in ids:
        head, _, digits = request_id.partition("_")
        size = SHORT_ID
        while size < len(digits) and any(
            other != request_id and other.startswith(f"{head}_{digits[:size]}") for other in ids
        ):
            size += 2
        shown[request_id] = f"{head}_{digits[:size]}" if digits else request_id
    return shown


def params_summary(params: Any, keys: int = 3, width: int = 24) -> str:
    """The first few params as ``key=value``, to tell one request from the next."""
    if not isinstance(params, Mapping) or not params:
        return ""
    parts = []
    for key in list(params)[:keys]:
        value = params[key]
        if isinstance(value, Mapping):
            text = "{" + counted(len(value), "key") + "}"
        elif isinstance(value, list):
            text = f"[{counted(len(value), 'item')}]"
        elif isinstance(value, int | float) and not isinstance(value, bool):
            text = f"{value:,}"
        else:
            text = json_text(value)
        parts.append(f"{key}={text if len(text) <= width else text[: width - 1] + '…'}")
    if len(params) > keys:
        parts.append(f"+{len(params) - keys} more")
    return " ".join(parts)


def why_line(request: Mapping[str, Any]) -> str:
    """Why a person is asked, in one line.

    The conditions that held and the decision's reason (a limit's count and
    window), else the rule's description.
    """
    why = request.get("why")
    if isinstance(why, Mapping):
        parts = [str(c) for c in why.get("conditions") or [] if isinstance(c, str)]
        if why.get("reason"):
            parts.append(str(why["reason"]))
        if parts:
            return "; ".join(parts)
        if why.get("description"):
            return str(why["description"])
    return str(request.get("reason") or "")


def _time_left(request: Mapping[str, Any], now: datetime) -> str:
    try:
        expires = datetime.fromisoformat(str(request.get("expires_at")))
    except ValueError:
        return "?"
    seconds = int((expires - now).total_seconds())
    if seconds <= 0:
        return "expired"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{rest % 60:02d}s"


def _terminal_row(
    request: Mapping[str, Any], shown_id: str, now: datetime, *, narrow: bool
) -> list[TableCell]:
    risk = str(request.get("risk_level") or "").upper()
    raw_action = request.get("action")
    action: Mapping[str, Any] = raw_action if isinstance(raw_action, Mapping) else {}
    agent = str(request.get("requester") or "")
    what = [_action_text(request) + (f" (by {agent})" if narrow else "")]
    what.append(params_summary(action.get("params")))
    description = str(action.get("description") or "")
    if description:
        cut = description if len(description) <= 60 else description[:59] + "…"
        what.append(f"agent wrote: “{cut}”")
    status = str(request.get("status") or "")
    left = _time_left(request, now) if status == "pending" else status
    row: list[TableCell] = [
        shown_id,
        Styled(risk, RISK_STYLES.get(risk, "")),
        Lines(tuple(what)),
        Lines((str(request.get("matched_rule") or "(default)"), why_line(request))),
    ]
    if not narrow:
        row.append(agent)
    row.append(Styled(left, STATUS_STYLES.get(status, "") if status != "pending" else ""))
    return row


def _row(request: Mapping[str, Any]) -> list[str | Styled]:
    risk = str(request.get("risk_level") or "").upper()
    status = str(request.get("status") or "")
    return [
        str(request.get("id") or ""),
        _short_time(request.get("created_at")),
        _action_text(request),
        Styled(risk, RISK_STYLES.get(risk, "")),
        str(request.get("matched_rule") or ""),
        str(request.get("requester") or ""),
        Styled(status, STATUS_STYLES.get(status, "")),
        _short_time(request.get("expires_at")),
    ]


def _why_lines(request: Mapping[str, Any]) -> list[tuple[str, str]]:
    why = request.get("why")
    if not isinstance(why, Mapping):
        return []
    lines = [("why", str(why.get("description") or ""))]
    for condition in why.get("conditions") or []:
        lines.append(("matched", str(condition)))
    return lines


def _show(request: Mapping[str, Any]) -> None:
    raw_action = request.get("action")
    action: Mapping[str, Any] = raw_action if isinstance(raw_action, Mapping) else {}
    status = str(request.get("status") or "")
    color = use_color()
    lines: list[tuple[str, str]] = [
        ("id", str(request.get("id") or "")),
        ("status", status),
        ("status why", str(request.get("status_reason") or "")),
        ("action", _action_text(request)),
        ("agent wrote", str(action.get("description") or "")),
        ("risk", str(request.get("risk_level") or "")),
        ("rule", str(request.get("matched_rule") or "")),
        *_why_lines(request),
        ("reason", str(request.get("reason") or "")),
        ("agent", str(request.get("requester") or "")),
        ("session", str(request.get("session_id") or "")),
        ("created", str(request.get("created_at") or "")),
        ("expires", str(request.get("expires_at") or "")),
        ("digest", str(request.get("digest") or "")),
    ]
    for name, raw in lines:
        if not raw:
            continue
        # Everything here but the name was written by the agent (or its
        # reviewers): shown inert, so no escape sequence or bidi control acts.
        value = inert(raw)
        shown = value
        if name == "status" and color:
            shown = click.style(value, fg=STATUS_STYLES.get(value) or None, bold=True)
        # a long value wraps under itself, not under the names
        click.echo(f"{name + ':':<13}{shown}".replace("\n", "\n" + " " * 13), color=color)
    info("params:")
    for line in json_text(action.get("params", {}), indent=2).splitlines():
        info(f"  {inert(line)}")
    decisions = request.get("decisions") or []
    if decisions:
        info("decisions:")
        for decision in decisions:
            if not isinstance(decision, Mapping):
                continue
            comment = f": {decision['comment']}" if decision.get("comment") else ""
            who = decision.get("reviewer")
            if decision.get("reviewer_issuer"):  # a person of an OpenID provider: name <id>
                who = f"{decision.get('reviewer_name')} <{who}>"
            info(
                inert(
                    f"  {_short_time(decision.get('at'))}  {who} {decision.get('verdict')}{comment}"
                )
            )


# ------------------------------------------------------------------ commands


def _connection_options(function: Any) -> Any:
    function = secret_option(
        "token",
        "AEGIS_TOKEN",
        "the token",
        help_text="A reviewer token (from `aegis token create NAME --role reviewer`).",
    )(function)
    return click.option(
        "--url",
        envvar="AEGIS_URL",
        show_envvar=True,
        default=DEFAULT_URL,
        show_default=True,
        callback=_service_url,
        help="The approval service (`aegis serve`).",
    )(function)


def _service_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The service's URL; one without http:// or https:// is refused with the fix."""
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in {"http", "https"}:
        raise click.BadParameter(
            f"{value!r} is not the URL of an approval service; it starts with http:// "
            f"or https://, e.g. http://{value if not sep else '127.0.0.1:8700'}"
        )
    return value


def _client(url: str, token: str | None) -> _Client:
    if not token:
        raise click.UsageError("no token: set AEGIS_TOKEN or give --token-file PATH")
    return _Client(url, token)


def _fail(message: str) -> NoReturn:
    raise _Refused(message)


@click.group()
def approvals() -> None:
    """List, show, approve and deny requests waiting in an approval service.

    Talks to `aegis serve` (--url, default $AEGIS_URL or http://127.0.0.1:8700)
    with a reviewer token ($AEGIS_TOKEN or --token-file PATH; never on argv).

    \b
    Exit status: 0 done, 1 refused by the service (or unreachable), 2 usage.

    \b
    Examples:
      export AEGIS_TOKEN=...            # aegis token create alice --role reviewer
      aegis approvals list
      aegis approvals show apr_3f2a9c1b
      aegis approvals approve apr_3f2a9c1b --comment "checked the order"
      aegis approvals deny 3f2a9c1b --comment "not this customer"

    \b
    An ID is a request's full id (apr_ and 24 hex digits) or any start of it
    that names one request (at least 4 digits, with or without apr_), as
    `aegis approvals list` shows them on a narrow terminal.
    """


@approvals.command("list")
@_connection_options
@click.option(
    "--status",
    type=click.Choice(STATUSES, case_sensitive=False),
    default="pending",
    show_default=True,
    help="Which requests to list.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="At most this many requests (one page).",
)
@click.option(
    "--before",
    metavar="CURSOR",
    help="The next page: the cursor the previous page named.",
)
@click.option(
    "--agent",
    metavar="NAME",
    help="Only the requests of this agent (its token's name).",
)
@click.option(
    "--risk",
    "risks",
    type=click.Choice(RISKS, case_sensitive=False),
    multiple=True,
    help="Only requests of this risk; repeat for several (--risk high --risk critical).",
)
@click.option("--rule", metavar="NAME", help="Only the requests of this policy rule.")
@click.option(
    "--sort",
    type=click.Choice(SORTS, case_sensitive=False),
    default="newest",
    show_default=True,
    help="Order: newest first, closest to expiring first, or highest risk first.",
)
@format_option("table", "json")
def list_requests(  # noqa: PLR0917  # Click passes one argument per option
    url: str,
    token: str | None,
    status: str,
    limit: int,
    before: str | None,
    agent: str | None,
    risks: tuple[str, ...],
    rule: str | None,
    sort: str,
    output_format: str,
) -> None:
    """List approval requests, newest first (pending ones by default), a page at a time.

    The service filters (--agent, --risk, --rule) and sorts (--sort) every
    matching request, not only one page, and counts them all. When more
    match than one page holds, it says how many more there are and the
    command that lists the next page (on stderr).
    """
    status, sort = status.lower(), sort.lower()
    levels = sorted({r.lower() for r in risks}, key=RISKS.index)
    with _client(url, token) as client:
        body = client.run(
            lambda c: c.list_requests(
                status,
                limit=limit,
                before=before,
                agent=agent,
                risk=levels or None,
                rule=rule,
                sort=sort,
            )
        )
    requests = _unwrap_list(body)
    more = body.get("more") if isinstance(body, Mapping) else None
    total = body.get("total") if isinstance(body, Mapping) else None
    filtered = bool(agent or levels or rule)
    if output_format == "json":
        emit_json(list(requests))
    elif not requests:
        kind = f"{status} " if status != "all" else ""
        info(f"no {kind}requests" + (" match the filters" if filtered else ""))
    elif is_terminal():
        if not isinstance(total, int):
            total = len(requests) + (more if isinstance(more, int) else 0)
        _print_terminal(requests, status, total, before is not None, sort=sort, filtered=filtered)
    else:
        print_table(
            (*LIST_COLUMNS, "Summary", "Why"),
            ([*_row(r), params_summary(_params(r)), why_line(r)] for r in requests),
        )
    following = body.get("next") if isinstance(body, Mapping) else None
    if isinstance(more, int) and more > 0 and isinstance(following, str):
        again = [f"--status {status}", f"--limit {limit}"]
        if sort != "newest":
            again.append(f"--sort {sort}")
        again += [f"--risk {level}" for level in levels]
        if agent:
            again.append(f"--agent {shlex.quote(inert(agent))}")
        if rule:
            again.append(f"--rule {shlex.quote(inert(rule))}")
        again.append(f"--before {shlex.quote(inert(following))}")
        note(
            f"{more} more{' after these' if sort != 'newest' else ', older'}; "
            f"the next page: aegis approvals list {' '.join(again)}"
        )


def _params(request: Mapping[str, Any]) -> Any:
    action = request.get("action")
    return action.get("params") if isinstance(action, Mapping) else None


def _print_terminal(
    requests: list[Mapping[str, Any]],
    status: str,
    total: int,
    paged: bool,
    *,
    sort: str = "newest",
    filtered: bool = False,
) -> None:
    """The table for people: why and a summary per row, readable at 80 columns."""
    width = shutil.get_terminal_size((80, 24)).columns
    ids = [str(r.get("id") or "") for r in requests]
    shown = short_ids(ids) if width < WIDE else {i: i for i in ids}
    now = datetime.now(UTC)
    kind = f"{status} " if status != "all" else ""
    order = {"newest": "newest first", "expiring": "closest to expiring first",
             "risk": "highest risk first"}.get(sort, sort)  # fmt: skip
    where = "on this page" if paged else order
    matching = " matching the filters" if filtered else ""
    info(f"{counted(total, kind + 'request')}{matching}; {len(requests)} shown ({where})")
    narrow = width < NARROW
    columns = [c for c in TERMINAL_COLUMNS if not (narrow and c == "Agent")]
    print_table(
        columns,
        (_terminal_row(r, shown[str(r.get("id") or "")], now, narrow=narrow) for r in requests),
        wrap=("Action", "Rule / why"),
    )
    if width < WIDE:
        note("short ids: any unambiguous start of an id works, e.g. aegis approvals show ID")


@approvals.command("show")
@_connection_options
@click.argument("request_id", metavar="ID")
@format_option("text", "json")
def show(url: str, token: str | None, request_id: str, output_format: str) -> None:
    """Show one request: the action, its params, the rule and the decisions so far."""
    with _client(url, token) as client:
        request = client.run(lambda c: _get(c, request_id))
    if not isinstance(request, Mapping):
        _fail("the service answered something that is not a request")
    if output_format == "json":
        emit_json(request)
    else:
        _show(request)


async def _get(client: ApprovalClient, request_id: str) -> dict[str, Any]:
    return await client.get(await resolve_id(client, request_id))


def _check_id(request_id: str) -> str:
    if not request_id.strip():
        raise click.BadParameter("an id is needed", param_hint="'ID'")
    return request_id.strip()


_FULL_ID: Final = re.compile(r"apr_[0-9a-f]{24}")
_PREFIX: Final = re.compile(r"(?:apr_)?([0-9a-f]{4,24})")
#: pages of 1000 requests a prefix is looked for in, newest first
PREFIX_PAGES: Final = 10


async def resolve_id(client: ApprovalClient, text: str) -> str:
    """The full id ``text`` names: itself, or the one request whose id starts with it.

    Raises:
        click.UsageError: the start names several requests.
        _Refused: no request's id starts with it.
    """
    text = _check_id(text)
    if _FULL_ID.fullmatch(text):
        return text
    found = _PREFIX.fullmatch(text.lower())
    if found is None:  # not an id's start: the service says whether it knows it
        return text
    prefix = "apr_" + found.group(1)
    matches: list[str] = []
    before: str | None = None
    for _ in range(PREFIX_PAGES):
        body = await client.list_requests("all", limit=1000, before=before)
        matches += [
            str(r.get("id")) for r in _unwrap_list(body) if str(r.get("id")).startswith(prefix)
        ]
        following = body.get("next")
        if not isinstance(following, str) or not following:
            break
        before = following
    else:
        if not matches:
            raise _Refused(
                f"no request id starting with {prefix} among the newest "
                f"{PREFIX_PAGES * 1000:,} requests; give the whole id"
            )
    if not matches:
        raise _Refused(f"no request id starts with {prefix}; `aegis approvals list` shows them")
    if len(matches) > 1:
        names = ", ".join(matches[:5]) + (
            f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        )
        raise click.UsageError(
            f"{prefix} is ambiguous: it starts {len(matches)} request ids ({names}); "
            "give more of the id"
        )
    return matches[0]


def _decide(
    *,
    url: str,
    token: str | None,
    request_id: str,
    verdict: str,
    comment: str | None,
    grant_minutes: int | None,
    output_format: str,
) -> None:
    async def decide(c: ApprovalClient) -> dict[str, Any]:
        full = await resolve_id(c, request_id)
        return await c.decide(full, verdict, comment=comment, grant_minutes=grant_minutes)

    with _client(url, token) as client:
        request = client.run(decide)
    if output_format == "json":
        emit_json(request)
        return
    status = str(request.get("status") or "") if isinstance(request, Mapping) else ""
    request_id = (
        str(request.get("id") or request_id) if isinstance(request, Mapping) else request_id
    )
    done = "approved" if verdict == "approve" else "denied"
    if status == "pending":
        # a two-person rule: this yes is recorded and the request waits for another reviewer
        success(f"{request_id}: your approval is recorded; it still needs another reviewer")
    else:
        success(f"{request_id}: {done}" + (f" ({status})" if status and status != done else ""))


@approvals.command("approve")
@_connection_options
@click.argument("request_id", metavar="ID")
@click.option("--comment", "-m", help="Why; stored with your decision in the audit trail.")
@click.option(
    "--grant-minutes",
    type=click.IntRange(min=1),
    help="Also let the same action type, target and rule pass in this session for N minutes.",
)
@format_option("text", "json")
def approve(  # noqa: PLR0917  # Click passes one argument per option
    url: str,
    token: str | None,
    request_id: str,
    comment: str | None,
    grant_minutes: int | None,
    output_format: str,
) -> None:
    """Approve a pending request."""
    _decide(
        url=url,
        token=token,
        request_id=request_id,
        verdict="approve",
        comment=comment,
        grant_minutes=grant_minutes,
        output_format=output_format,
    )


@approvals.command("deny")
@_connection_options
@click.argument("request_id", metavar="ID")
@click.option("--comment", "-m", help="Why; the agent and the audit trail see it.")
@format_option("text", "json")
def deny(
    url: str, token: str | None, request_id: str, comment: str | None, output_format: str
) -> None:
    """Deny a pending request."""
    _decide(
        url=url,
        token=token,
        request_id=request_id,
        verdict="deny",
        comment=comment,
        grant_minutes=None,
        output_format=output_format,
    )

"""The service compares reviewers by identity: issuer and subject, not the name shown."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aegis.core.action import Action
from aegis.core.approval_request import NewRequest, RequestStatus, Role, TokenInfo, Verdict
from aegis.core.identity import Identity
from aegis.core.risk import RiskLevel
from aegis.errors import ApprovalServiceError
from aegis.server.service import ApprovalService, Principal
from aegis.stores.approvals import hash_token, open_approval_store

ISSUER = "https://id.example.com"
AGENT = Principal("bot", Role.AGENT)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ApprovalService]:
    """A service over a fresh SQLite store, trusting ISSUER."""
    opened = ApprovalService(open_approval_store(str(tmp_path / "a.db")), oidc_issuer=ISSUER)
    yield opened
    opened.close()


def _new(approvers: int) -> NewRequest:
    return NewRequest(
        "s1", Action("wire", "bank", {"n": approvers}), RiskLevel.HIGH, "wires", "", approvers
    )


def _person(subject: str, name: str) -> Principal:
    return Principal(name, Role.REVIEWER, ("finance",), Identity(ISSUER, subject, name))


async def test_same_person_under_two_names_counts_once(service: ApprovalService) -> None:
    """Two principals of one issuer and subject cannot be the two of a two-person rule."""
    request, _ = await service.create(AGENT, _new(2))
    await service.decide(_person("42", "Alice Example"), request.id, Verdict.APPROVE)
    with pytest.raises(ApprovalServiceError) as twice:
        await service.decide(_person("42", "alice-laptop"), request.id, Verdict.APPROVE)
    assert twice.value.status == 409
    decided = await service.decide(_person("43", "Carol"), request.id, Verdict.APPROVE)
    assert decided.status is RequestStatus.APPROVED
    assert [d.identity for d in decided.decisions] == [
        Identity(ISSUER, "42"),
        Identity(ISSUER, "43"),
    ]


async def test_refusal_names_the_person_who_decided(service: ApprovalService) -> None:
    """The page's refusal uses the identity too: another name of the same person is refused."""
    request, _ = await service.create(AGENT, _new(2))
    decided = await service.decide(_person("42", "Alice Example"), request.id, Verdict.APPROVE)
    refusal = ApprovalService.refusal(_person("42", "A. Example"), decided)
    assert refusal == "A. Example has already decided this request"
    assert ApprovalService.refusal(_person("7", "Bob"), decided) is None


async def test_a_person_reads_their_decision_after_leaving_its_group(
    service: ApprovalService,
) -> None:
    """Moved from finance to ops, Alice still reads what she decided by id, and lists it no more."""
    request, _ = await service.create(
        AGENT, replace(_new(2), reviewers=("finance",), matched_rule="payroll")
    )
    await service.decide(_person("42", "Alice Example"), request.id, Verdict.APPROVE)
    moved = Principal("Alice Example", Role.REVIEWER, ("ops",), Identity(ISSUER, "42"))
    seen = await service.get(moved, request.id)
    assert [d.identity for d in seen.decisions] == [Identity(ISSUER, "42")]
    assert request.id not in [r.id for r in await service.list_requests(moved, None)]
    stranger = Principal("Oscar", Role.REVIEWER, ("ops",), Identity(ISSUER, "99"))
    with pytest.raises(ApprovalServiceError) as refused:
        await service.get(stranger, request.id)
    assert refused.value.code == "wrong_group"


async def test_tied_token_is_the_person(service: ApprovalService) -> None:
    """A reviewer token tied to a subject authenticates as that person at its issuer."""
    info = TokenInfo(
        "alice-cli", Role.REVIEWER, ("finance",), datetime.now(UTC),
        oidc_issuer=ISSUER, oidc_subject="42",
    )  # fmt: skip
    service.store.create_token(info, hash_token("secret-token"))
    principal = await service.authenticate("secret-token")
    assert principal.who == Identity(ISSUER, "42")
    assert principal.who.name == "alice-cli"


async def test_tied_token_naming_no_issuer_is_refused(service: ApprovalService) -> None:
    """A subject at no issuer is nobody in particular: 401, even where the service trusts one.

    Otherwise it would be whoever holds that subject at the issuer trusted
    now, and a switch of issuer would hand its word to someone else.
    """
    info = TokenInfo("old-cli", Role.REVIEWER, ("finance",), datetime.now(UTC), oidc_subject="42")
    service.store.create_token(info, hash_token("old-token"))
    assert service.oidc_issuer
    with pytest.raises(ApprovalServiceError) as refused:
        await service.authenticate("old-token")
    assert refused.value.status == 401
    assert "--oidc-issuer" in refused.value.message


async def test_tied_token_without_a_trusted_issuer_is_refused(tmp_path: Path) -> None:
    """A token tied to a subject on a service that names no issuer fails closed (401)."""
    bare = ApprovalService(open_approval_store(str(tmp_path / "b.db")))
    try:
        info = TokenInfo("alice-cli", Role.REVIEWER, (), datetime.now(UTC), oidc_subject="42")
        bare.store.create_token(info, hash_token("secret-token"))
        with pytest.raises(ApprovalServiceError) as refused:
            await bare.authenticate("secret-token")
        assert refused.value.status == 401
        assert "--oidc-issuer" in refused.value.message
    finally:
        bare.close()

"""`aegis serve` over TLS, and a RemoteApprovalHandler that checks the service's certificate."""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from service_support import POLICY, Reviewer, Service, add_tokens

from aegis import Action, AuditLogger, Policy, ResultStatus, Runtime
from aegis.runtime.approval_remote import RemoteApprovalHandler


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aegis test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_approval_over_tls(tmp_path: Path) -> None:
    """With --tls-cert/--tls-key the service speaks HTTPS; a verifying handler is approved."""
    cert, key = self_signed(tmp_path)
    db = str(tmp_path / "aegis.db")
    add_tokens(db)
    service = Service(
        db,
        tmp_path,
        args=("--tls-cert", str(cert), "--tls-key", str(key)),
        scheme="https",
        verify=str(cert),
    ).start()
    handler = RemoteApprovalHandler(service.url, token="bot-secret", timeout=10, verify=str(cert))
    alice = Reviewer(service.url, "alice", verify=str(cert))
    try:
        async with Runtime(
            executor=lambda action: "ok",
            policy=Policy.from_dict(POLICY),
            approval_handler=handler,
            audit_logger=AuditLogger(db),
            session_id="tls",
        ) as runtime:
            task = asyncio.create_task(runtime.run_one(Action("refund", "billing")))
            request = await alice.pending("tls")
            await alice.decide(request["id"])
            assert (await asyncio.wait_for(task, 10)).status is ResultStatus.SUCCESS
        unverified = RemoteApprovalHandler(service.url, token="bot-secret", timeout=0.5)
        async with Runtime(
            executor=lambda action: "ok",
            policy=Policy.from_dict(POLICY),
            approval_handler=unverified,
            audit_logger=AuditLogger(db),
        ) as runtime:
            refused = await runtime.run_one(Action("refund", "billing"))
        await unverified.aclose()
        assert refused.status is ResultStatus.DENIED
        assert "did not answer" in (refused.error or "")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{service.port}/healthz")
    finally:
        await handler.aclose()
        await alice.aclose()
        service.stop()

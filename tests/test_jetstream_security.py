"""The JetStream broker's transport security on a real cluster: TLS (server and client certificates) and nkeys."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hyperhive_core.broker import BrokerSection, RecipientDirectory
from hyperhive_core.brokers import JetStreamSection
from hyperhive_core.brokers.jetstream import JetStreamBroker
from hyperhive_core.brokers.localcluster import LocalCluster, Tls
from hyperhive_core.errors import StoreError

Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def issue(directory: Path, name: str, ca: Issued | None = None, *, server: bool = False) -> Issued:
    """``name.pem`` and ``name.key`` in ``directory``: a CA if ``ca`` is None, else a server or client cert it signs."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (directory / f"{name}.key").write_bytes(pem)
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is None:
        builder, signer = builder.issuer_name(subject), key
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.issuer_name(ca[0].subject).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        signer = ca[1]
    cert = builder.sign(signer, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def broker(urls: list[str], **section: object) -> JetStreamBroker:
    policy = RecipientDirectory()
    policy.add("bob")
    return JetStreamBroker(JetStreamSection(urls=urls, **section), BrokerSection(), policy=policy)


async def refusal(urls: list[str], **section: object) -> str:
    refused = broker(urls, request_timeout_seconds=2.0, **section)
    try:
        with pytest.raises(StoreError) as raised:
            await refused.send("operator", "bob", "refused")
    finally:
        await refused.aclose()
    return str(raised.value)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = issue(tmp_path, "ca")
    issue(tmp_path, "server", ca, server=True)
    issue(tmp_path, "client", ca)
    issue(tmp_path, "stranger", issue(tmp_path, "other-ca"))  # a client cert from a CA the servers do not trust
    return tmp_path


async def test_tls_with_client_certificates_and_clear_refusals(pki, nursery):
    cluster = LocalCluster(pki / "nats", tls=Tls(pki / "server.pem", pki / "server.key", pki / "ca.pem", verify=True))
    cluster.start()
    try:
        assert all(url.startswith("tls://") for url in cluster.urls)
        client = {"tls_ca": pki / "ca.pem", "tls_cert": pki / "client.pem", "tls_key": pki / "client.key"}
        trusted = broker(cluster.urls, **client)
        await nursery.start(trusted.serve)
        sent = await trusted.send("operator", "bob", "over TLS")
        batch = await trusted.lease("bob")
        assert [m.body for m in batch.messages] == ["over TLS"]
        assert batch.ids == [sent.id]
        await trusted.ack(batch)

        plain = [url.replace("tls://", "nats://") for url in cluster.urls]
        said = await refusal(plain)  # no tls_ca: the servers' certificate is checked against the system's CAs
        assert all(url in said for url in plain)
        assert "does not verify (unable to get local issuer certificate)" in said
        assert "[jetstream] tls_ca (not set, so the system's CAs); set tls_ca to the CA that signed" in said

        said = await refusal(cluster.urls, **client | {"tls_ca": pki / "other-ca.pem"})
        assert f"against [jetstream] tls_ca ({pki / 'other-ca.pem'})" in said

        said = await refusal(cluster.urls, tls_ca=pki / "ca.pem")  # the servers require a client certificate
        assert all(url in said for url in cluster.urls)
        assert "refused the TLS handshake (TLSV13_ALERT_CERTIFICATE_REQUIRED)" in said
        assert "set [jetstream] tls_cert and tls_key (tls_cert: not set)" in said

        stranger = client | {"tls_cert": pki / "stranger.pem", "tls_key": pki / "stranger.key"}
        said = await refusal(cluster.urls, **stranger)
        assert "refused the TLS handshake" in said
        assert f"(tls_cert: {pki / 'stranger.pem'})" in said
    finally:
        cluster.close()


async def test_an_nkey_seed_authenticates(tmp_path, nursery):
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    cluster = LocalCluster(tmp_path / "nats", authorization=f'users: [{{nkey: "{public}"}}]')
    cluster.start()
    try:
        secret = tmp_path / "hive.nk"
        secret.write_bytes(seed + b"\n")
        secret.chmod(0o600)
        authorized = broker(cluster.urls, credentials_file=secret)
        await nursery.start(authorized.serve)
        assert (await authorized.send("operator", "bob", "signed with an nkey")).body == "signed with an nkey"

        secret.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))  # a user the servers do not know
        said = await refusal(cluster.urls, credentials_file=secret)
        assert "cannot connect: the NATS cluster at " in said
        assert (
            f"refused the credentials (nats: 'Authorization Violation'); check [jetstream] credentials_file ({secret})"
            in said
        )
        said = await refusal(cluster.urls)  # no credentials at all
        assert "refused the credentials" in said
        assert "credentials_file (not set)" in said
    finally:
        cluster.close()

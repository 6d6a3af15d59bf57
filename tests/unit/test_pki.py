"""The lab CA (lab_kit.pki): issuing, checking and verifying certificates (no netns, no root)."""

from __future__ import annotations

import base64
import ssl
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab_kit.pki import (
    FAKE_CERT_CN,
    CertInfo,
    LabCA,
    TLSError,
    cert_info,
    check_tls_pair,
    fake_certificate,
    verify_chain,
)

OPENSSL = Path("/usr/bin/openssl")
HOSTS = ["web.example.com", "*.apps.example.com", "10.96.0.10", "fd00::10"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.load_or_create(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.load_or_create(tmp_path_factory.mktemp("pki-other"), name="other")


@pytest.fixture(scope="module")
def leaf(ca: LabCA) -> tuple[bytes, bytes]:
    return ca.issue(HOSTS)


def _openssl_verify(ca_file: Path, cert_file: Path, *extra: str) -> subprocess.CompletedProcess:
    if not OPENSSL.exists():
        pytest.skip("/usr/bin/openssl is not installed")
    return subprocess.run(
        [str(OPENSSL), "verify", *extra, "-CAfile", str(ca_file), str(cert_file)],
        capture_output=True, text=True, timeout=30, check=False,
    )


# -- the CA on disk ----------------------------------------------------------------------------


def test_load_or_create_creates_then_loads(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "lab" / "pki"
    ca = LabCA.load_or_create(directory, name="lab")
    assert ca.directory == directory
    assert ca.cert_path == directory / "ca.crt"
    assert (directory / "ca.crt").read_bytes() == ca.cert_pem
    key_file = directory / "ca.key"
    assert b"-----BEGIN PRIVATE KEY-----" in key_file.read_bytes()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not list(directory.glob(".*.tmp"))

    again = LabCA.load_or_create(str(directory))
    assert again.cert_pem == ca.cert_pem
    # the loaded CA signs with the same key
    assert verify_chain(again.issue(["a.example.com"])[0], ca.cert_pem)


def test_ca_certificate_fields(ca: LabCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "lab_kit lab CA"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "lab_kit"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    info = cert_info(ca.cert_pem)
    assert info.self_signed
    assert info.not_before < datetime.now(UTC) < info.not_after
    assert info.not_after - info.not_before >= timedelta(days=3650)


def test_half_a_ca_is_refused(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path)
    ca.cert_path.unlink()
    with pytest.raises(TLSError, match="ca.key exists but ca.crt does not"):
        LabCA.load_or_create(tmp_path)


# -- issuing and verifying ---------------------------------------------------------------------


def test_issued_leaf_verifies(ca: LabCA, leaf: tuple[bytes, bytes], tmp_path: Path) -> None:
    cert_pem, _ = leaf
    assert verify_chain(cert_pem, ca.cert_pem)
    leaf_file = tmp_path / "leaf.pem"
    leaf_file.write_bytes(cert_pem)
    result = _openssl_verify(ca.cert_path, leaf_file)
    assert result.returncode == 0, result.stdout + result.stderr
    # also under the strict RFC 5280 rules and for the TLS server purpose
    strict = _openssl_verify(ca.cert_path, leaf_file, "-x509_strict", "-purpose", "sslserver")
    assert strict.returncode == 0, strict.stdout + strict.stderr


def test_leaf_from_another_ca_is_rejected(
    ca: LabCA, other_ca: LabCA, tmp_path: Path
) -> None:
    foreign, _ = other_ca.issue(["web.example.com"])
    assert not verify_chain(foreign, ca.cert_pem)
    leaf_file = tmp_path / "foreign.pem"
    leaf_file.write_bytes(foreign)
    result = _openssl_verify(ca.cert_path, leaf_file)
    assert result.returncode != 0


def test_same_issuer_name_but_other_key_is_rejected(ca: LabCA, tmp_path: Path) -> None:
    # a second CA with the very same subject name: only the signature tells them apart
    impostor = LabCA.load_or_create(tmp_path)
    assert cert_info(impostor.cert_pem).subject_cn == cert_info(ca.cert_pem).subject_cn
    assert not verify_chain(impostor.issue(["web.example.com"])[0], ca.cert_pem)


def test_leaf_contents(ca: LabCA, leaf: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = leaf
    assert b"-----BEGIN PRIVATE KEY-----" in key_pem  # PKCS8, unencrypted
    cert = x509.load_pem_x509_certificate(cert_pem)
    info = cert_info(cert_pem)
    assert info.subject_cn == "web.example.com"
    assert info.issuer_cn == "lab_kit lab CA"
    assert info.dns_names == ("web.example.com", "*.apps.example.com")
    assert info.ip_addresses == ("10.96.0.10", "fd00::10")
    assert not info.self_signed
    assert info.not_before.tzinfo is not None
    assert timedelta(days=364) < info.not_after - info.not_before <= timedelta(days=365)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)


@pytest.mark.parametrize(("hosts", "words"), [
    ([], "at least one host"),
    (["web.example.com", "bad_name.example.com"], "'bad_name.example.com'"),
    (["https://web.example.com"], "without a scheme"),
    (["a.*.example.com"], "whole left-most label"),
    (["*.com"], "at least two labels"),
    (["web.example.com."], "trailing"),
    (["300.1.2.3"], "IP address"),
    ([""], "empty"),
])
def test_issue_refuses_bad_hosts(ca: LabCA, hosts: list[str], words: str) -> None:
    with pytest.raises(TLSError, match=words.replace("*", r"\*")):
        ca.issue(hosts)


# -- CertInfo.matches --------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "expected"), [
    ("web.example.com", True),
    ("WEB.Example.COM", True),
    ("web.example.com.", True),
    ("example.com", False),
    ("other.example.com", False),
    ("a.apps.example.com", True),
    ("A.Apps.Example.Com", True),
    ("apps.example.com", False),
    ("a.b.apps.example.com", False),
    (".apps.example.com", False),
    ("*.apps.example.com", False),
    ("10.96.0.10", True),
    ("fd00:0::10", True),
    ("10.96.0.11", False),
    ("", False),
])
def test_matches(leaf: tuple[bytes, bytes], host: str, expected: bool) -> None:
    assert cert_info(leaf[0]).matches(host) is expected


def test_matches_never_uses_partial_or_short_wildcards() -> None:
    now = datetime.now(UTC)
    info = CertInfo("x", "y", ("w*.example.com", "*.com"), (), now, now, False)
    assert not info.matches("www.example.com")
    assert not info.matches("example.com")


# -- check_tls_pair ----------------------------------------------------------------------------


def test_check_tls_pair_ok(leaf: tuple[bytes, bytes]) -> None:
    info = check_tls_pair(*leaf)
    assert info.subject_cn == "web.example.com"
    assert info == cert_info(leaf[0])


def test_check_tls_pair_accepts_a_chain(ca: LabCA, leaf: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = leaf
    assert check_tls_pair(cert_pem + ca.cert_pem, key_pem).subject_cn == "web.example.com"
    with pytest.raises(TLSError, match="the first one must be the server's own"):
        check_tls_pair(ca.cert_pem + cert_pem, key_pem)


def test_check_tls_pair_mismatched_key(ca: LabCA, leaf: tuple[bytes, bytes]) -> None:
    _, other_key = ca.issue(["web.example.com"])
    with pytest.raises(TLSError, match=r"tls.key does not belong to tls.crt \(the public keys"):
        check_tls_pair(leaf[0], other_key)


@pytest.mark.parametrize(("cert", "words"), [
    (b"hello", "tls.crt is not a PEM certificate: no '-----BEGIN"),
    (b"", "tls.crt is not a PEM certificate: it is empty"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
     "tls.crt is not a PEM certificate: "),
])
def test_check_tls_pair_garbage_cert(leaf: tuple[bytes, bytes], cert: bytes, words: str) -> None:
    with pytest.raises(TLSError, match=words):
        check_tls_pair(cert, leaf[1])


def test_check_tls_pair_garbage_key(leaf: tuple[bytes, bytes]) -> None:
    with pytest.raises(TLSError, match="tls.key is not a PEM private key: no '-----BEGIN"):
        check_tls_pair(leaf[0], b"garbage")
    broken = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with pytest.raises(TLSError, match="tls.key is not a PEM private key: "):
        check_tls_pair(leaf[0], broken)


def test_check_tls_pair_explains_common_mix_ups(leaf: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = leaf
    with pytest.raises(TLSError, match="swapped"):
        check_tls_pair(key_pem, cert_pem)
    with pytest.raises(TLSError, match="base64-decode it first"):
        check_tls_pair(base64.b64encode(cert_pem), key_pem)


def test_check_tls_pair_expired(ca: LabCA) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    cert_pem, key_pem = ca.issue(["old.example.com"], days=30, not_before=start)
    info = cert_info(cert_pem)
    assert (info.not_before, info.not_after) == (start, start + timedelta(days=30))
    with pytest.raises(TLSError, match="tls.crt expired on 2024-01-31 00:00 UTC"):
        check_tls_pair(cert_pem, key_pem)
    # "two years ago", as an exercise would make it
    two_years_ago = datetime.now(UTC) - timedelta(days=730)
    with pytest.raises(TLSError, match="tls.crt expired on "):
        check_tls_pair(*ca.issue(["old.example.com"], days=30, not_before=two_years_ago))
    # it was fine back then
    assert check_tls_pair(cert_pem, key_pem, now=start + timedelta(days=1)) == info


def test_check_tls_pair_not_yet_valid(leaf: tuple[bytes, bytes]) -> None:
    with pytest.raises(TLSError, match="tls.crt is not valid before "):
        check_tls_pair(*leaf, now=datetime(2000, 1, 1, tzinfo=UTC))


# -- the Secret and the fake certificate -------------------------------------------------------


def test_tls_secret_round_trip(ca: LabCA) -> None:
    secret = ca.tls_secret("web-tls", namespace="shop", hosts=["web.example.com"], days=10)
    assert secret["apiVersion"] == "v1" and secret["kind"] == "Secret"
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"] == {"name": "web-tls", "namespace": "shop"}
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    data = {k: base64.b64decode(v, validate=True) for k, v in secret["data"].items()}
    info = check_tls_pair(data["tls.crt"], data["tls.key"])
    assert info.dns_names == ("web.example.com",)
    assert info.not_after - info.not_before == timedelta(days=10)
    assert data["ca.crt"] == ca.cert_pem
    assert verify_chain(data["tls.crt"], data["ca.crt"])
    with pytest.raises(TLSError, match="at least one host"):
        ca.tls_secret("web-tls")
    with pytest.raises(TLSError, match="Secret name 'Web_TLS'"):
        ca.tls_secret("Web_TLS", hosts=["web.example.com"])


def test_fake_certificate(ca: LabCA) -> None:
    cert_pem, key_pem = fake_certificate()
    info = check_tls_pair(cert_pem, key_pem)
    assert info.self_signed
    assert info.subject_cn == info.issuer_cn == FAKE_CERT_CN
    assert info.dns_names == ("ingress.local",)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Acme Co"
    assert timedelta(days=364) < info.not_after - info.not_before <= timedelta(days=366)
    assert not verify_chain(cert_pem, ca.cert_pem)
    assert verify_chain(cert_pem, cert_pem)


# -- a real TLS handshake with Python's ssl module (OpenSSL, as curl uses) -------------------


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> dict:
    """An in-memory TLS handshake; returns the server certificate the client accepted."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client_done = server_done = False
    for _ in range(10):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if client_done and server_done:
            return client.getpeercert()
    raise AssertionError("the TLS handshake did not finish")


@pytest.fixture(scope="module")
def tls_contexts(
    ca: LabCA, leaf: tuple[bytes, bytes], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    files = tmp_path_factory.mktemp("tls")
    (files / "tls.crt").write_bytes(leaf[0])
    (files / "tls.key").write_bytes(leaf[1])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files / "tls.crt", files / "tls.key")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=ca.cert_path)
    client.check_hostname = True
    client.verify_mode = ssl.CERT_REQUIRED
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    return server, client


def test_ssl_handshake_host_in_san(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    peer = _handshake(*tls_contexts, "web.example.com")
    assert dict(x[0] for x in peer["subject"])["commonName"] == "web.example.com"


def test_ssl_handshake_host_not_in_san(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(*tls_contexts, "other.example.com")


def test_matches_agrees_with_openssl(
    leaf: tuple[bytes, bytes], tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    info = cert_info(leaf[0])
    for host in ["web.example.com", "a.apps.example.com", "apps.example.com",
                 "a.b.apps.example.com", "example.com", "10.96.0.10", "10.96.0.11"]:
        try:
            _handshake(*tls_contexts, host)
            accepted = True
        except ssl.SSLCertVerificationError:
            accepted = False
        assert info.matches(host) is accepted, host


def test_ssl_client_rejects_another_cas_leaf(
    other_ca: LabCA, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext], tmp_path: Path
) -> None:
    cert_pem, key_pem = other_ca.issue(["web.example.com"])
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(server, tls_contexts[1], "web.example.com")


def test_issue_takes_one_host_as_a_string_and_drops_duplicates(ca: LabCA) -> None:
    info = cert_info(ca.issue("Web.Example.com")[0])  # type: ignore[arg-type]
    assert info.dns_names == ("web.example.com",)
    info = cert_info(ca.issue(["a.example.com", "A.example.com", "10.0.0.1", "10.0.0.1"])[0])
    assert (info.dns_names, info.ip_addresses) == (("a.example.com",), ("10.0.0.1",))

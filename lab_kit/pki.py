"""The lab's certificate authority, for the ingress lab's TLS.

Each cluster has one lab CA (`ca.crt` + `ca.key` in a directory). It issues the server
certificates that go into `kubernetes.io/tls` Secrets, and the `external` client's curl trusts
it with `--cacert ca.crt`. `check_tls_pair` explains, in words a learner can act on, why an
ingress controller would refuse a Secret and serve its fake certificate instead.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab_kit.naming import DNS_LABEL_RE, DNS_SUBDOMAIN_RE

__all__ = [
    "FAKE_CERT_CN",
    "CertInfo",
    "LabCA",
    "TLSError",
    "cert_info",
    "check_tls_pair",
    "fake_certificate",
    "verify_chain",
]

FAKE_CERT_CN = "Kubernetes Ingress Controller Fake Certificate"

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
_CA_YEARS = 10
_BACKDATE = timedelta(hours=1)  # tolerate a little clock skew between the lab's netns clients

_PEM_CERT_RE = re.compile(
    rb"-----BEGIN (?:X509 )?CERTIFICATE-----.*?-----END (?:X509 )?CERTIFICATE-----", re.DOTALL
)
_PEM_KEY_MARK = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_HOST_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class TLSError(ValueError):
    """A certificate, key or host name that cannot be used; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# what a certificate says


@dataclass(frozen=True)
class CertInfo:
    """The parts of a certificate that matter for serving HTTPS (and for a learner reading it)."""

    subject_cn: str
    issuer_cn: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    self_signed: bool

    def matches(self, host: str) -> bool:
        """Whether a client connecting to `host` accepts this certificate's names (RFC 6125).

        A DNS name matches case-insensitively; `*.example.com` matches exactly one extra
        left-most label (`a.example.com`, not `example.com` nor `a.b.example.com`), and like
        OpenSSL (curl) a wildcard needs at least two labels after it. An IP address matches only
        the IP entries. The subject CN is never used: clients today look at the SAN only.
        """
        host = host.strip().lower()
        if host.endswith("."):
            host = host[:-1]
        if not host or "*" in host:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            return any(ipaddress.ip_address(entry) == ip for entry in self.ip_addresses)
        return any(_dns_name_matches(pattern, host) for pattern in self.dns_names)


def _dns_name_matches(pattern: str, host: str) -> bool:
    pattern = pattern.lower()
    if pattern.endswith("."):
        pattern = pattern[:-1]
    if not pattern.startswith("*."):
        return "*" not in pattern and pattern == host
    rest = pattern[2:]
    if "*" in rest or rest.count(".") < 1:  # "*.com": OpenSSL refuses such a wildcard
        return False
    label, dot, host_rest = host.partition(".")
    return bool(label) and bool(dot) and host_rest == rest


def cert_info(cert_pem: bytes) -> CertInfo:
    """The CertInfo of the first certificate in `cert_pem`."""
    return _info(_load_certs(cert_pem, "cert_pem")[0])


def _info(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    self_signed = cert.issuer == cert.subject and _signed_by(cert, cert.public_key())
    return CertInfo(
        subject_cn=_cn(cert.subject),
        issuer_cn=_cn(cert.issuer),
        dns_names=dns,
        ip_addresses=ips,
        not_before=_not_before(cert),
        not_after=_not_after(cert),
        self_signed=self_signed,
    )


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return ""
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _not_before(cert: x509.Certificate) -> datetime:
    aware = getattr(cert, "not_valid_before_utc", None)  # cryptography >= 42
    return aware if aware is not None else cert.not_valid_before.replace(tzinfo=UTC)


def _not_after(cert: x509.Certificate) -> datetime:
    aware = getattr(cert, "not_valid_after_utc", None)
    return aware if aware is not None else cert.not_valid_after.replace(tzinfo=UTC)


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


# ---------------------------------------------------------------------------------------------
# reading PEM the way an ingress controller does, with messages a learner can act on


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)


def _looks_base64_pem(data: bytes) -> bool:
    try:
        decoded = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b"-----BEGIN " in decoded


def _no_pem_hint(data: bytes) -> str:
    if not data.strip():
        return "it is empty"
    if _looks_base64_pem(data):
        return ("it is base64-encoded PEM (the way a Secret's `data` stores it); "
                "base64-decode it first")
    return "no '-----BEGIN ...-----' block found"


def _load_certs(data: bytes | str, what: str) -> list[x509.Certificate]:
    """Every certificate in `data`, in order; TLSError naming `what` if there is none."""
    raw = _as_bytes(data)
    prefix = f"{what} is not a PEM certificate"
    blocks = _PEM_CERT_RE.findall(raw)
    if not blocks:
        if _PEM_KEY_MARK.search(raw):
            raise TLSError(f"{prefix}: it holds a private key "
                           "(are tls.crt and tls.key swapped?)")
        raise TLSError(f"{prefix}: {_no_pem_hint(raw)}")
    certs = []
    for number, block in enumerate(blocks, start=1):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            where = f"certificate #{number}: " if len(blocks) > 1 else ""
            raise TLSError(f"{prefix}: {where}{exc}") from None
    return certs


def _load_key(data: bytes | str, what: str) -> Any:
    raw = _as_bytes(data)
    prefix = f"{what} is not a PEM private key"
    if not _PEM_KEY_MARK.search(raw):
        if _PEM_CERT_RE.search(raw):
            raise TLSError(f"{prefix}: it holds a certificate (are tls.crt and tls.key swapped?)")
        raise TLSError(f"{prefix}: {_no_pem_hint(raw)}")
    try:
        return serialization.load_pem_private_key(raw, password=None)
    except TypeError:
        raise TLSError(f"{what} is encrypted with a passphrase; an ingress controller needs an "
                       "unencrypted key (openssl pkey -in key.pem -out plain.pem)") from None
    except UnsupportedAlgorithm as exc:
        raise TLSError(f"{prefix}: unsupported key type ({exc})") from None
    except ValueError as exc:
        raise TLSError(f"{prefix}: {exc}") from None


def _spki(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signed_by(cert: x509.Certificate, public_key: Any) -> bool:
    """Whether `public_key` made `cert`'s signature (over its to-be-signed bytes)."""
    algorithm = cert.signature_hash_algorithm
    data, signature = cert.tbs_certificate_bytes, cert.signature
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if algorithm is None:
                return False
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            if algorithm is None:
                return False
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(public_key, dsa.DSAPublicKey):
            if algorithm is None:
                return False
            public_key.verify(signature, data, algorithm)
        elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public_key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# checks


def check_tls_pair(cert_pem: bytes, key_pem: bytes, *, now: datetime | None = None) -> CertInfo:
    """Check a kubernetes.io/tls Secret's `tls.crt` and `tls.key` the way an ingress controller
    would before serving them; return the leaf's CertInfo or raise TLSError saying what is wrong.

    `tls.crt` may hold a chain (the server's own certificate first, then intermediates); only
    that first certificate has to belong to `tls.key`. `now` defaults to the current time.
    """
    certs = _load_certs(cert_pem, "tls.crt")
    key = _load_key(key_pem, "tls.key")
    leaf = certs[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        hint = ""
        if len(certs) > 1:
            hint = (f"; tls.crt holds {len(certs)} certificates and the first one must be "
                    "the server's own, before any CA")
        raise TLSError(f"tls.key does not belong to tls.crt (the public keys differ){hint}")
    info = _info(leaf)
    moment = datetime.now(UTC) if now is None else _aware(now)
    if moment > info.not_after:
        raise TLSError(f"tls.crt expired on {_when(info.not_after)}; issue a new certificate")
    if moment < info.not_before:
        raise TLSError(f"tls.crt is not valid before {_when(info.not_before)} "
                       f"(it is now {_when(moment)}); check the clock or issue a new one")
    return info


def verify_chain(cert_pem: bytes, ca_pem: bytes) -> bool:
    """True if the first certificate in `cert_pem` was issued by the CA in `ca_pem`: its issuer
    name is the CA's subject and its signature was made by the CA's key."""
    leaf = _load_certs(cert_pem, "cert_pem")[0]
    ca = _load_certs(ca_pem, "ca_pem")[0]
    return leaf.issuer == ca.subject and _signed_by(leaf, ca.public_key())


def _aware(moment: datetime) -> datetime:
    """A naive datetime is taken to be UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# ---------------------------------------------------------------------------------------------
# making certificates


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _server_key_usage() -> x509.KeyUsage:
    # digitalSignature only: for an EC key, keyEncipherment is not a valid usage (RFC 5480 s.3),
    # and every TLS 1.2/1.3 ECDHE suite needs just the signature.
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )


def _parse_hosts(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str):  # issue("a.example.com") would otherwise be 13 one-letter hosts
        hosts = [hosts]
    if not hosts:
        raise TLSError("a certificate needs at least one host name (or IP address) to be issued "
                       "for, e.g. hosts=['web.example.com']")
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        if not isinstance(host, str):
            raise TLSError(f"host {host!r} is not a string")
        name = _parse_host(host)
        key = f"{type(name).__name__}:{name.value}"
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def _parse_host(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    bad = f"invalid host name {host!r}"
    if not host:
        raise TLSError(f"{bad}: it is empty")
    if host != host.strip() or any(ch.isspace() for ch in host):
        raise TLSError(f"{bad}: it contains whitespace")
    if not host.isascii():
        raise TLSError(f"{bad}: only ASCII is allowed; write an internationalised name in its "
                       "xn-- (punycode) form")
    if "://" in host or "/" in host or ":" in host:
        raise TLSError(f"{bad}: give the bare host name, without a scheme, port or path")
    name = host.lower()
    if name.endswith("."):
        raise TLSError(f"{bad}: drop the trailing '.'")
    if len(name) > 253:
        raise TLSError(f"{bad}: it is longer than 253 characters")
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            raise TLSError(f"{bad}: a wildcard needs at least two labels after '*.' "
                           "(curl ignores a wildcard like '*.com')")
    if any("*" in label for label in labels):
        raise TLSError(f"{bad}: '*' is allowed only as the whole left-most label, "
                       "as in '*.example.com'")
    for label in labels:
        if not _HOST_LABEL_RE.match(label):
            raise TLSError(f"{bad}: label {label!r} must be 1-63 of a-z, 0-9 and '-', "
                           "starting and ending with a letter or digit")
    if labels[-1].isdigit():
        raise TLSError(f"{bad}: it looks like an IP address but is not a valid one")
    return x509.DNSName(name)


class LabCA:
    """One cluster's lab certificate authority: `ca.crt` and `ca.key` in `directory`.

    Make it with `LabCA.load_or_create(directory)`. Its certificate (`cert_path`) is what the
    `external` client's curl is given with `--cacert`.
    """

    def __init__(
        self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> None:
        self.directory = directory
        self._cert = cert
        self._key = key

    def __repr__(self) -> str:
        return f"LabCA({_cn(self._cert.subject)!r}, directory={str(self.directory)!r})"

    # -- on disk ----------------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, directory: str | Path, name: str = "lab_kit") -> LabCA:
        """Read `directory/ca.crt` and `directory/ca.key`, or make a new CA there if neither
        exists (`name` goes into a new CA's subject: "<name> lab CA")."""
        directory = Path(directory)
        cert_file, key_file = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        have_cert, have_key = cert_file.exists(), key_file.exists()
        if have_cert and have_key:
            return cls._load(directory)
        if have_cert or have_key:
            present, missing = (cert_file, key_file) if have_cert else (key_file, cert_file)
            raise TLSError(f"the lab CA in {directory} is incomplete: {present.name} exists but "
                           f"{missing.name} does not; restore {missing.name}, or delete "
                           f"{present.name} to make a new CA (certificates it issued will no "
                           "longer be trusted)")
        return cls._create(directory, name)

    @classmethod
    def _load(cls, directory: Path) -> LabCA:
        cert_file, key_file = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        cert = _load_certs(cert_file.read_bytes(), str(cert_file))[0]
        key = _load_key(key_file.read_bytes(), str(key_file))
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise TLSError(f"{key_file} does not belong to {cert_file} (the public keys differ); "
                           "delete both to make a new lab CA")
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise TLSError(f"{cert_file} is not a CA certificate (no BasicConstraints CA:TRUE); "
                           "delete it and ca.key to make a new lab CA")
        return cls(directory, cert, key)

    @classmethod
    def _create(cls, directory: Path, name: str) -> LabCA:
        key = _new_key()
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} lab CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lab_kit"),
        ])
        start = datetime.now(UTC) - _BACKDATE
        cert = (
            _builder(subject, subject, key, start, 365 * _CA_YEARS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        # key first, each written whole then renamed: a crash never leaves a ca.crt without key
        write_file(directory / CA_KEY_FILE, _key_pem(key), 0o600)
        write_file(directory / CA_CERT_FILE, _cert_pem(cert), 0o644)
        return cls(directory, cert, key)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return _cert_pem(self._cert)

    @property
    def cert_path(self) -> Path:
        """`directory/ca.crt`: the file to give `curl --cacert`."""
        return self.directory / CA_CERT_FILE

    # -- issuing ----------------------------------------------------------------------------

    def issue(
        self, hosts: Sequence[str], *, days: int = 365, not_before: datetime | None = None
    ) -> tuple[bytes, bytes]:
        """A new server certificate for `hosts`: (cert_pem, key_pem).

        The first host is the subject CN; all of them go into the SAN (an IP address as an IP
        entry, anything else as a DNS name, `*.example.com` wildcards included). The validity
        runs from `not_before` (default: an hour ago) for `days` days; a `not_before` in the
        past makes an expired certificate for an exercise.
        """
        names = _parse_hosts(hosts)
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise TLSError(f"days must be a whole number of days >= 1, not {days!r}")
        first = str(names[0].value)
        if len(first) > 64:
            raise TLSError(f"host {first!r} is longer than 64 characters, the limit of a "
                           "certificate's common name; put a shorter host first")
        start = datetime.now(UTC) - _BACKDATE if not_before is None else _aware(not_before)
        key = _new_key()
        try:
            ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        cert = (
            _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)]),
                     self._cert.subject, key, start, days)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_server_key_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(aki, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return _cert_pem(cert), _key_pem(key)

    def tls_secret(
        self, name: str, namespace: str = "default", hosts: Sequence[str] = (), **issue_kw: Any
    ) -> dict[str, Any]:
        """A v1 Secret of type kubernetes.io/tls holding a new certificate for `hosts`.

        Like cert-manager's, its data has `tls.crt`, `tls.key` and `ca.crt` (base64 strings).
        `issue_kw` (days, not_before) are passed to `issue`.
        """
        if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN_RE.match(name):
            raise TLSError(f"Secret name {name!r} is not valid: use lowercase letters, digits, "
                           "'-' and '.', starting and ending with a letter or digit")
        if not isinstance(namespace, str) or len(namespace) > 63 or not DNS_LABEL_RE.match(
            namespace
        ):
            raise TLSError(f"namespace {namespace!r} is not valid: use at most 63 lowercase "
                           "letters, digits and '-', starting and ending with a letter or digit")
        cert_pem, key_pem = self.issue(hosts, **issue_kw)
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": _b64(cert_pem),
                "tls.key": _b64(key_pem),
                "ca.crt": _b64(self.cert_pem),
            },
        }


def _builder(subject: x509.Name, issuer: x509.Name, key: Any, start: datetime,
             days: int) -> x509.CertificateBuilder:
    """A certificate for `key`'s public half, a random serial, valid `days` from `start`."""
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(days=days)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write `data` whole to a temporary file with `mode` (0o600: key material), then rename it
    over `path`: a reader never sees half a file, and the mode never depends on the umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask may have taken bits away from `mode`
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fake_certificate() -> tuple[bytes, bytes]:
    """A self-signed (cert_pem, key_pem) like the one ingress-nginx serves for a host whose
    TLS Secret is missing or unusable: CN FAKE_CERT_CN, O "Acme Co", SAN `ingress.local`."""
    key = _new_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Co"),
        x509.NameAttribute(NameOID.COMMON_NAME, FAKE_CERT_CN),
    ])
    start = datetime.now(UTC) - _BACKDATE
    cert = (
        _builder(name, name, key, start, 365)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("ingress.local")]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_server_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)

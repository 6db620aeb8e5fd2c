"""A development PKI: one CA and a certificate per role, for `tidal certs`.

Each certificate names its holder twice: subject CN (the identity, e.g. "worker-1") and
OU (the role), and a URI SAN `tidal://role/<role>/<identity>` that services read to
authorize the peer (core/authz.py). DNS and IP SANs let clients verify the host name.
Keys are ECDSA P-256 and written with mode 0600. Production deployments bring their own
PKI: any CA works as long as certificates carry that URI SAN (or OU + CN).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tidal.core.authz import ROLE_NAMES, valid_identity

URI_PREFIX = "tidal://role/"
DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
CA_NAME = "ca"
_IDENTITY = re.compile(r"^tidal://role/([a-z]+)/([A-Za-z0-9._-]{1,64})$")


@dataclass(frozen=True)
class Issued:
    """Paths of one certificate and its key."""

    cert: Path
    key: Path


def _name(common_name: str, role: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tidal")]
    if role:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _san(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def role_uri(role: str, identity: str) -> str:
    return f"{URI_PREFIX}{role}/{identity}"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(
    common_name: str = "tidal development CA", valid_days: float = 365.0, now: dt.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = now or dt.datetime.now(dt.UTC)
    key = new_key()
    name = _name(common_name, None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    role: str,
    identity: str,
    sans: Sequence[str] = DEFAULT_SANS,
    valid_days: float = 365.0,
    now: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate for `identity` in `role`, usable as TLS server and client.
    A negative `valid_days` issues one that has already expired (for tests)."""
    if role not in ROLE_NAMES:
        raise ValueError(f"role: must be one of {', '.join(ROLE_NAMES)}, got {role!r}")
    if not valid_identity(identity):
        raise ValueError(f"name: 1-64 characters of [A-Za-z0-9._-], got {identity!r}")
    now = now or dt.datetime.now(dt.UTC)
    key = new_key()
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=valid_days)
    if end <= start:
        start = end - dt.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(identity, role))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([*_san(sans), x509.UniformResourceIdentifier(role_uri(role, identity))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Writes atomically with `mode` from the start (a key is never briefly world-readable)."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (use --force to overwrite)")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # The file object owns the descriptor from here and closes it once; write() writes all.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_pair(
    out_dir: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, force: bool
) -> Issued:
    issued = Issued(out_dir / f"{stem}.crt", out_dir / f"{stem}.key")
    _write(issued.key, key_pem(key), 0o600, force)
    _write(issued.cert, cert_pem(cert), 0o644, force)
    return issued


def load_ca(out_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key((out_dir / f"{CA_NAME}.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{out_dir / CA_NAME}.key: not an EC key made by `tidal certs`")
    return key, x509.load_pem_x509_certificate((out_dir / f"{CA_NAME}.crt").read_bytes())


def create_dev_pki(
    out_dir: Path,
    holders: Sequence[tuple[str, str]],
    sans: Sequence[str] = DEFAULT_SANS,
    valid_days: float = 365.0,
    force: bool = False,
) -> dict[str, Issued]:
    """Writes ca.crt/ca.key (reusing an existing CA unless `force`) and `<identity>.crt/.key`
    for each (role, identity) in `holders`. Refuses to overwrite a leaf unless `force`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for role, identity in holders:
        target = out_dir / f"{identity}.key"
        if target.exists() and not force:
            raise FileExistsError(f"{target} exists (use --force to overwrite)")
        issue_check = role in ROLE_NAMES and valid_identity(identity)
        if not issue_check:
            raise ValueError(f"{role}:{identity}: role must be one of {', '.join(ROLE_NAMES)}, name [A-Za-z0-9._-]")
    ca_exists = (out_dir / f"{CA_NAME}.key").exists()
    if ca_exists and not force:
        ca_key, ca_cert = load_ca(out_dir)
        issued = {CA_NAME: Issued(out_dir / f"{CA_NAME}.crt", out_dir / f"{CA_NAME}.key")}
    else:
        ca_key, ca_cert = create_ca(valid_days=max(valid_days, 1.0))
        issued = {CA_NAME: write_pair(out_dir, CA_NAME, ca_key, ca_cert, force=True)}
    for role, identity in holders:
        key, cert = issue(ca_key, ca_cert, role, identity, sans, valid_days)
        issued[identity] = write_pair(out_dir, identity, key, cert, force)
    return issued


@lru_cache(maxsize=256)
def identity_from_pem(pem: bytes) -> tuple[str, str] | None:
    """(role, identity) named by a certificate: its `tidal://role/...` URI SAN, else its OU
    and CN; None when it names no tidal role. Cached: a peer's certificate is parsed once."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
            if (match := _IDENTITY.match(uri)) and match.group(1) in ROLE_NAMES:
                return match.group(1), match.group(2)
    except x509.ExtensionNotFound:
        pass
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if ou and cn and str(ou[0].value) in ROLE_NAMES and valid_identity(str(cn[0].value)):
        return str(ou[0].value), str(cn[0].value)
    return None

"""`tidal certs` and certificate identities (security/certs.py, security/bundle.py)."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from tidal.cli import app
from tidal.core.errors import InvalidArgumentError
from tidal.core.tokens import TokenTable
from tidal.security.bundle import create_bundle, environment, split_bundle
from tidal.security.certs import cert_pem, create_ca, identity_from_pem, issue
from tidal.transport.tls import InsecureConfigError, SecurityConfig, insecure_reason, require_secure


def test_bundle_files_modes_and_identities(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    create_bundle(out, extra=[("worker", "worker-1")], sans=["tidal-coordinator", "10.0.0.7"], valid_days=30)
    for name in ("ca", "coordinator", "shard", "worker", "worker-1", "admin"):
        assert stat.S_IMODE((out / f"{name}.key").stat().st_mode) == 0o600
        assert (out / f"{name}.crt").is_file()
    for secret in ("tokens.yaml", "admin.token", "worker-1.token"):
        assert stat.S_IMODE((out / secret).stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((out / "worker-1.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "tidal-coordinator" in sans.get_values_for_type(x509.DNSName)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "10.0.0.7"}
    assert identity_from_pem((out / "worker-1.crt").read_bytes()) == ("worker", "worker-1")
    assert identity_from_pem((out / "admin.crt").read_bytes()) == ("admin", "admin")
    assert identity_from_pem((out / "ca.crt").read_bytes()) is None
    assert 29 <= (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days <= 30
    table = TokenTable.parse((out / "tokens.yaml").read_text())
    principal = table.lookup((out / "worker-1.token").read_text().strip())
    assert principal is not None and principal.identity == "worker-1"
    config = SecurityConfig.from_env(environment(out, "worker-1"))
    assert config.mutual and config.auth_required and config.token and config.cert_path == out / "worker-1.crt"


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    create_bundle(tmp_path)
    before = (tmp_path / "admin.key").read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        create_bundle(tmp_path)
    assert (tmp_path / "admin.key").read_bytes() == before
    create_bundle(tmp_path, force=True)
    assert (tmp_path / "admin.key").read_bytes() != before


def test_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["certs", str(tmp_path / "pki"), "--extra", "worker:w-7", "--san", "example.org"])
    assert result.exit_code == 0, result.output
    assert "TIDAL_TLS_DIR=" in result.output and (tmp_path / "pki" / "w-7.crt").is_file()
    again = runner.invoke(app, ["certs", str(tmp_path / "pki")])
    assert again.exit_code == 1 and "exists" in again.output
    bad = runner.invoke(app, ["certs", str(tmp_path / "other"), "--extra", "root:x"])
    assert bad.exit_code == 1 and "role" in bad.output


def test_expired_and_foreign_certificates_are_what_they_claim() -> None:
    ca_key, ca_cert = create_ca()
    _, expired = issue(ca_key, ca_cert, "admin", "old", valid_days=-1)
    assert expired.not_valid_after_utc < dt.datetime.now(dt.UTC)
    with pytest.raises(ValueError, match="role"):
        issue(ca_key, ca_cert, "root", "x")
    with pytest.raises(ValueError, match="name"):
        issue(ca_key, ca_cert, "admin", "a b")
    assert identity_from_pem(b"not a certificate") is None
    assert identity_from_pem(cert_pem(expired)) == ("admin", "old")


def test_security_config_from_env(tmp_path: Path) -> None:
    assert not SecurityConfig.from_env({}).tls
    create_bundle(tmp_path)
    server = SecurityConfig.from_env({"TIDAL_TLS_DIR": str(tmp_path)}, default_name="shard")
    assert server.cert_path == tmp_path / "shard.crt" and server.mutual and not server.tokens
    with pytest.raises(InvalidArgumentError, match="TIDAL_TLS_DIR"):
        SecurityConfig.from_env({"TIDAL_TLS_DIR": str(tmp_path / "missing")})
    with pytest.raises(InvalidArgumentError, match="TIDAL_TOKENS_FILE"):
        SecurityConfig.from_env({"TIDAL_TOKENS_FILE": str(tmp_path / "missing.yaml")})
    with pytest.raises(InvalidArgumentError, match="give both"):
        SecurityConfig(cert_path=tmp_path / "admin.crt")


def test_require_secure_refuses_plaintext_unless_asked_for(tmp_path: Path) -> None:
    bare = SecurityConfig.from_env({})
    for server in (True, False):
        with pytest.raises(InsecureConfigError, match="TIDAL_ALLOW_PLAINTEXT=1"):
            require_secure(bare, "tidal x", server)
        require_secure(SecurityConfig.from_env({"TIDAL_ALLOW_PLAINTEXT": "1"}), "tidal x", server)
    with pytest.raises(InvalidArgumentError, match="TIDAL_ALLOW_PLAINTEXT"):
        SecurityConfig.from_env({"TIDAL_ALLOW_PLAINTEXT": "maybe"})
    create_bundle(tmp_path)
    mutual = SecurityConfig.from_env({"TIDAL_TLS_DIR": str(tmp_path)}, default_name="shard")
    require_secure(mutual, "tidal shard", server=True)
    require_secure(SecurityConfig.from_env({"TIDAL_TLS_DIR": str(tmp_path)}), "tidal status", server=False)
    # TLS without a way to authenticate callers is not secure either.
    one_way = SecurityConfig(cert_path=tmp_path / "shard.crt", key_path=tmp_path / "shard.key")
    assert "without client authentication" in insecure_reason(one_way, server=True)
    # Asked for TLS (a folder) but the certificate is missing: never plaintext, even when allowed.
    env = {"TIDAL_TLS_DIR": str(tmp_path), "TIDAL_TLS_NAME": "nobody", "TIDAL_ALLOW_PLAINTEXT": "1"}
    with pytest.raises(InsecureConfigError, match="although TLS was asked for"):
        require_secure(SecurityConfig.from_env(env), "tidal shard", server=True)


def test_split_gives_each_holder_only_its_share(tmp_path: Path) -> None:
    create_bundle(tmp_path, extra=[("worker", "worker-1")])
    split_bundle(tmp_path, extra=[("worker", "worker-1")])
    assert sorted(p.name for p in (tmp_path / "public").iterdir()) == ["ca.crt"]
    assert sorted(p.name for p in (tmp_path / "shard").iterdir()) == ["ca.crt", "shard.crt", "shard.key", "shard.token"]
    assert "tokens.yaml" in {p.name for p in (tmp_path / "coordinator").iterdir()}
    assert "tokens.yaml" not in {p.name for p in (tmp_path / "worker-1").iterdir()}
    for holder in ("coordinator", "shard", "worker", "worker-1", "admin"):
        assert not list((tmp_path / holder).glob("ca.key")), holder
        assert (tmp_path / holder / f"{holder}.key").stat().st_mode & 0o777 == 0o600
        config = SecurityConfig.from_env({"TIDAL_TLS_DIR": str(tmp_path / holder), "TIDAL_TLS_NAME": holder})
        assert config.mutual
        require_secure(config, holder, server=True)


def test_cli_keep_existing_and_split(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "pki"
    first = runner.invoke(app, ["certs", str(out), "--keep-existing", "--split", "--san", "shard-0"])
    assert first.exit_code == 0, first.output
    key = (out / "shard" / "shard.key").read_bytes()
    again = runner.invoke(app, ["certs", str(out), "--keep-existing", "--split"])
    assert again.exit_code == 0 and "kept it" in again.output, again.output
    assert f"wrote {len(list((out / 'shard').iterdir()))}" not in again.output.splitlines()[0]
    plain = runner.invoke(app, ["certs", str(out), "--keep-existing"])
    # Kept means nothing written: it does not also say "wrote N files".
    assert plain.exit_code == 0 and "kept it" in plain.output and "wrote" not in plain.output, plain.output
    assert (out / "shard" / "shard.key").read_bytes() == key
    both = runner.invoke(app, ["certs", str(out), "--keep-existing", "--force"])
    assert both.exit_code != 0

"""Everything a development cluster needs to run with mutual TLS and tokens, in one folder.

`create_bundle` (what `tidal certs` runs) writes:
  ca.crt, ca.key                 the development CA (keep ca.key away from the cluster)
  <identity>.crt, <identity>.key one certificate per holder; by default one per role, named
                                 after it (coordinator, shard, worker, admin), which is the
                                 name a process looks for when TIDAL_TLS_NAME is unset
  tokens.yaml                    the servers' token table (TIDAL_TOKENS_FILE)
  <identity>.token               each holder's bearer token (TIDAL_TOKEN_FILE)
Private keys and tokens are written with mode 0600.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from tidal.core.tokens import TokenTable, new_token
from tidal.security.certs import DEFAULT_SANS, create_dev_pki

DEFAULT_HOLDERS: tuple[tuple[str, str], ...] = (
    ("coordinator", "coordinator"),
    ("shard", "shard"),
    ("worker", "worker"),
    ("admin", "admin"),
)
TOKENS_FILE = "tokens.yaml"


def _write_secret(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    tmp.write_text(text)
    tmp.replace(path)


def create_bundle(
    out_dir: Path,
    extra: Sequence[tuple[str, str]] = (),
    sans: Sequence[str] = (),
    valid_days: float = 365.0,
    force: bool = False,
) -> list[Path]:
    """Writes the folder described above; returns the files written. Refuses to overwrite
    any certificate, key or token unless `force` (the CA is reused when it exists)."""
    holders = list(dict.fromkeys([*DEFAULT_HOLDERS, *extra]))
    tokens_path = out_dir / TOKENS_FILE
    if tokens_path.exists() and not force:
        raise FileExistsError(f"{tokens_path} exists (use --force to overwrite)")
    issued = create_dev_pki(out_dir, holders, [*DEFAULT_SANS, *sans], valid_days, force)
    entries = [{"token": new_token(), "role": role, "identity": identity} for role, identity in holders]
    text = yaml.safe_dump({"tokens": entries}, sort_keys=False)
    TokenTable.parse(text, str(tokens_path))  # what we write must load
    _write_secret(tokens_path, text)
    written = [p for pair in issued.values() for p in (pair.cert, pair.key)] + [tokens_path]
    for entry in entries:
        token_path = out_dir / f"{entry['identity']}.token"
        _write_secret(token_path, entry["token"] + "\n")
        written.append(token_path)
    return written


def environment(out_dir: Path, name: str = "") -> dict[str, str]:
    """The variables that make a process use the bundle in `out_dir`. Without `name`, each
    process picks the certificate named after its role and authenticates with it (mutual
    TLS); with one, it also sends that holder's token."""
    env = {"TIDAL_TLS_DIR": str(out_dir), "TIDAL_TOKENS_FILE": str(out_dir / TOKENS_FILE)}
    if name:
        env |= {"TIDAL_TLS_NAME": name, "TIDAL_TOKEN_FILE": str(out_dir / f"{name}.token")}
    return env

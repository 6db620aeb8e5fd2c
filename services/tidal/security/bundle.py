"""Everything a development cluster needs to run with mutual TLS and tokens, in one folder.

`create_bundle` (what `tidal certs` runs) writes:
  ca.crt, ca.key                 the development CA (keep ca.key away from the cluster)
  <identity>.crt, <identity>.key one certificate per holder; by default one per role, named
                                 after it (coordinator, shard, worker, admin), which is the
                                 name a process looks for when TIDAL_TLS_NAME is unset
  tokens.yaml                    the servers' token table (TIDAL_TOKENS_FILE)
  <identity>.token               each holder's bearer token (TIDAL_TOKEN_FILE)
Private keys and tokens are written with mode 0600.

`split_bundle` (`tidal certs --split`) then copies what each holder needs, and nothing else,
into `<identity>/` (ca.crt, its own certificate, key and token; the coordinator's folder also
gets tokens.yaml, which its REST API checks) and `public/ca.crt` (for a metrics scraper).
Deployments mount one such folder per service (a compose volume, a Kubernetes Secret), so
no service sees the CA's key or another holder's key.
"""

from __future__ import annotations

import shutil
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
CA_CERT = "ca.crt"
PUBLIC_DIR = "public"
# Holders whose folder gets the token table: the servers that check bearer tokens (REST).
TOKEN_CHECKERS = ("coordinator",)


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


def bundle_exists(out_dir: Path, extra: Sequence[tuple[str, str]] = ()) -> bool:
    """Everything `create_bundle` would write for these holders is there already."""
    holders = [*DEFAULT_HOLDERS, *extra]
    names = [CA_CERT, "ca.key", TOKENS_FILE] + [f"{i}{ext}" for _, i in holders for ext in (".crt", ".key", ".token")]
    return all((out_dir / name).is_file() for name in names)


def _copy(source: Path, target: Path, mode: int) -> Path:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.touch(mode=mode)
    tmp.chmod(mode)
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    return target


def split_bundle(out_dir: Path, extra: Sequence[tuple[str, str]] = ()) -> list[Path]:
    """Copies each holder's share of the bundle in `out_dir` into `out_dir/<identity>/`, and
    ca.crt into `out_dir/public/` (see the module docstring); overwrites earlier copies."""
    written: list[Path] = []
    public = out_dir / PUBLIC_DIR
    public.mkdir(exist_ok=True)
    written.append(_copy(out_dir / CA_CERT, public / CA_CERT, 0o644))
    for _, identity in dict.fromkeys([*DEFAULT_HOLDERS, *extra]):
        folder = out_dir / identity
        folder.mkdir(exist_ok=True)
        written.append(_copy(out_dir / CA_CERT, folder / CA_CERT, 0o644))
        written.append(_copy(out_dir / f"{identity}.crt", folder / f"{identity}.crt", 0o644))
        for name in (f"{identity}.key", f"{identity}.token", *([TOKENS_FILE] if identity in TOKEN_CHECKERS else [])):
            written.append(_copy(out_dir / name, folder / name, 0o600))
    return written

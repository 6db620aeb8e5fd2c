"""Bearer tokens: the table a server checks, read from a JSON or YAML file.

File format (JSON or YAML), one entry per token:

    tokens:
      - {token: "<at least 32 characters>", role: admin, identity: alice}
      - {token: "...", role: worker, identity: worker-0}

`lookup` compares the presented token with every entry in constant time
(`hmac.compare_digest`), so response time does not reveal how much of a token matched.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import yaml

from tidal.core.authz import AuthRole, Principal, valid_identity
from tidal.core.errors import InvalidArgumentError

MIN_TOKEN_CHARS = 32
MAX_TOKEN_CHARS = 512


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenTable:
    entries: tuple[tuple[bytes, Principal], ...]

    @classmethod
    def parse(cls, text: str, source: str = "tokens file") -> TokenTable:
        try:
            data: Any = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidArgumentError(f"{source}: not JSON or YAML: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list) or not data["tokens"]:
            raise InvalidArgumentError(f"{source}: must be a mapping with a non-empty list 'tokens'")
        entries: list[tuple[bytes, Principal]] = []
        seen: set[str] = set()
        for i, entry in enumerate(data["tokens"]):
            where = f"{source}: tokens[{i}]"
            if not isinstance(entry, dict) or set(entry) != {"token", "role", "identity"}:
                raise InvalidArgumentError(f"{where}: needs exactly the keys token, role, identity")
            token, role, identity = (str(entry[k]) for k in ("token", "role", "identity"))
            if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable():
                raise InvalidArgumentError(
                    f"{where}.token: {MIN_TOKEN_CHARS}-{MAX_TOKEN_CHARS} printable ASCII characters"
                )
            if token in seen:
                raise InvalidArgumentError(f"{where}.token: the same token appears twice")
            seen.add(token)
            try:
                auth_role = AuthRole(role)
            except ValueError:
                raise InvalidArgumentError(f"{where}.role: one of admin, coordinator, shard, worker") from None
            if not valid_identity(identity):
                raise InvalidArgumentError(f"{where}.identity: 1-64 characters of [A-Za-z0-9._-]")
            entries.append((token.encode(), Principal(auth_role, identity, "token")))
        return cls(tuple(entries))

    def lookup(self, presented: str) -> Principal | None:
        """The principal of `presented`, or None. Every entry is compared (no early exit)."""
        candidate = presented.encode("utf-8", "replace")[:MAX_TOKEN_CHARS]
        found: Principal | None = None
        for token, principal in self.entries:
            if hmac.compare_digest(token, candidate):
                found = principal
        return found

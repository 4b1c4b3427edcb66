"""The Ray auth token on the submitting side: where it is read from, and what to say when it fails.

Ray >= 2.52 protects the dashboard and the Jobs API with a static bearer token (``RAY_AUTH_MODE=token``).
We look for it where Ray does (``RAY_AUTH_TOKEN``, then the file named by ``RAY_AUTH_TOKEN_PATH``,
then ``~/.ray/auth_token``) and send it as ``Authorization: Bearer ...`` through
``JobSubmissionClient(headers=...)``, so it works whether or not this shell sets ``RAY_AUTH_MODE``.
The token's value is never put in a message, a repr or a log line; :func:`redact` is the safety net
for text that comes back from the cluster.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ue.artifacts import make_private

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
REDACTED = "<redacted>"
log = logging.getLogger("ue.auth")


def default_token_path() -> Path:
    """``~/.ray/auth_token``, where ``ray get-auth-token --generate`` and Ray's own heads keep it."""
    return Path.home() / ".ray" / "auth_token"


@dataclass(frozen=True)
class Token:
    """A token and where it came from; only ``source`` is ever shown."""

    value: str = field(repr=False)
    source: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}

    def __str__(self) -> str:
        return f"the token from {self.source}"


class AuthProblem(RuntimeError):
    """The cluster wants a token we do not have, or rejected ours. The message says what to do."""


def _read_token_file(path: Path, source: str) -> Token | None:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthProblem(f"cannot read the Ray auth token file {path} ({exc.strerror}); fix its permissions") from None
    return Token(value, source) if value else None


def find_token(env: Mapping[str, str] | None = None) -> Token | None:
    """The token this shell would send, in Ray's order of precedence, or None.

    Raises:
        AuthProblem: when ``RAY_AUTH_TOKEN_PATH`` names a file that is missing or empty (Ray treats
            that as a fatal misconfiguration too, rather than silently falling back).
    """
    env = os.environ if env is None else env
    if env.get(TOKEN_ENV, "").strip():
        return Token(env[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    if env.get(TOKEN_PATH_ENV, "").strip():
        path = Path(env[TOKEN_PATH_ENV]).expanduser()
        token = _read_token_file(path, f"${TOKEN_PATH_ENV} ({path})")
        if token is None:
            raise AuthProblem(f"${TOKEN_PATH_ENV} points at {path}, which is missing or empty; "
                              "write the cluster's token there or unset the variable")
        return token
    path = default_token_path()
    return _read_token_file(path, str(path))


def ensure_local_token() -> Token:
    """The token a local head should use: an existing one, else a new random one saved (mode 0600)
    at ``~/.ray/auth_token`` where both the head and ``ue`` find it."""
    path = default_token_path()
    keep_private(path)
    token = find_token()
    if token is not None:
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing empty file may have looser permissions
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_hex(32))
    return find_token()  # type: ignore[return-value]  # just written


def keep_private(path: Path) -> None:
    """Tighten a token file others could read to mode 0600, saying so (Ray's own start writes 0644)."""
    old = make_private(path)
    if old is not None:
        log.warning("%s was mode %o, readable by other users; tightened to 600 (it holds the Ray auth token)",
                    path, old)


def missing_token_message(address: str) -> str:
    return (
        f"The Ray cluster at {address} requires an auth token and none was found.\n"
        f"Set {TOKEN_ENV} to the cluster's token, or save it in {default_token_path()} "
        f"(or a file named by {TOKEN_PATH_ENV}).\n"
        "Get it on the head node with `ray get-auth-token`; a head started by `ue cluster start-local` "
        "uses ~/.ray/auth_token of the user who started it."
    )


def rejected_token_message(address: str, token: Token) -> str:
    return (
        f"The Ray cluster at {address} rejected {token}.\n"
        f"Replace it with the cluster's token (`ray get-auth-token` on the head node) in {token.source}, "
        f"or set {TOKEN_ENV} to the right one."
    )


def redact(text: str, token: Token | None) -> str:
    """``text`` with every occurrence of the token's value replaced by ``<redacted>``."""
    if token is None or not token.value:
        return text
    return text.replace(token.value, REDACTED)

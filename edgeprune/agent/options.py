"""The agent's settings, checked before it listens: where it binds, its token, its store and its limits."""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.agent.protocol import TOKEN_ENV
from edgeprune.errors import BadArgumentError
from edgeprune.profiling.health import cache_dir

DEFAULT_PORT = 8642
MIN_TOKEN_CHARS = 16
"""A token anyone could guess is no token; a generated one has 43 characters (32 random bytes)."""


def default_store() -> Path:
    """Uploaded models live in edgeprune's cache folder on the device, never where a client says."""
    return cache_dir() / "agent-models"


@dataclass(frozen=True)
class AgentOptions:
    token: str
    """Every endpoint but ``/health`` needs ``Authorization: Bearer <token>``."""
    host: str = "127.0.0.1"
    """Loopback unless the user opens it to the network on purpose (``--host 0.0.0.0``)."""
    port: int = DEFAULT_PORT
    store: Path = field(default_factory=default_store)
    max_upload_mb: float = 512.0
    """The most a request body may carry, in MB (10^6 bytes): all-MiniLM-L6-v2 fp32 is 90 MB, a 0.5B int4 decoder
    about 400 MB."""
    time_limit_s: float = 600.0
    """The longest one measurement may run (warm-up, timed runs, the memory probe); it is then killed."""

    def __post_init__(self) -> None:
        if len(self.token) < MIN_TOKEN_CHARS:
            raise BadArgumentError(f"the agent's token has {len(self.token)} characters, fewer than "
                                   f"{MIN_TOKEN_CHARS}", "use a longer one, or give none and let the agent make one")
        if not 0 < self.port < 65536:
            raise BadArgumentError(f"--port {self.port} is not a TCP port", "pass a port from 1 to 65535")
        for name, value in (("--max-upload-mb", self.max_upload_mb), ("--time-limit-s", self.time_limit_s)):
            if not value > 0:
                raise BadArgumentError(f"{name} {value} is not positive", f"pass {name} greater than 0")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (127.0.0.0/8, ::1, localhost); anything else is a network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(token_file: Path | None) -> tuple[str, bool]:
    """The agent's token and whether it was generated now: from ``token_file``, else ``$EDGEPRUNE_AGENT_TOKEN``,
    else a new random one (which the caller must show the user, who passes it to the client)."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise BadArgumentError(f"cannot read --token-file '{token_file}' ({reason})",
                                   "pass a file holding the token on one line") from None
        return token, False
    if token := os.environ.get(TOKEN_ENV, "").strip():
        return token, False
    return secrets.token_urlsafe(32), True

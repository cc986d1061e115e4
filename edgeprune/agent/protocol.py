"""What the agent and its client say to each other: the measurement request, and refusals as HTTP statuses.

Pydantic here because this is an edge: a request arrives as JSON from the network, and a bad field must be a
422 naming it, never a measurement with a nonsense setting.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from edgeprune.errors import EdgepruneError
from edgeprune.profiling import DEFAULT_NEW_TOKENS

TOKEN_ENV = "EDGEPRUNE_AGENT_TOKEN"
"""The environment variable both sides read the agent's token from when it is not given otherwise."""
SHA256 = re.compile(r"[0-9a-f]{64}")
"""A model's name in the store: its SHA-256 in lower-case hex, and nothing else (no path can be spelt with it)."""


class MeasureSettings(BaseModel):
    """How to measure: the same settings a local ``edgeprune profile`` takes. The upper bounds keep one request
    from occupying the device for days; the time limit stops whatever still runs too long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int | None = Field(default=None, ge=1, le=1024)
    """Intra-op threads; None: every core the agent may use."""
    batch: int = Field(default=1, ge=1, le=1024)
    seq_len: int = Field(default=128, ge=1, le=65536)
    runs: int = Field(default=100, ge=1, le=100_000)
    new_tokens: int = Field(default=DEFAULT_NEW_TOKENS, ge=1, le=65536)
    """Decoder LLMs: tokens generated after the ``seq_len`` prompt."""
    memory: bool = True
    """Measure peak memory too (a fresh process on the device; calibration anchors skip it)."""


class MeasureRequest(MeasureSettings):
    """``POST /measure``: an uploaded model, by the hash ``POST /models`` answered, and the settings."""

    sha256: str = Field(pattern=f"^{SHA256.pattern}$")

    def settings(self) -> MeasureSettings:
        return MeasureSettings(**self.model_dump(exclude={"sha256"}))


class Refusal(EdgepruneError):
    """A request the agent refuses, with the HTTP status that tells the client why; the server answers it as
    ``{"detail": "<cause> — <fix>"}``."""

    def __init__(self, status: int, cause: str, fix: str = "") -> None:
        self.status = status
        super().__init__(cause, fix)

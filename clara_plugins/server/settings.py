"""Server settings and API keys (read keys and write keys, from environment variables or files; never logged)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from clara_plugins.errors import ConfigError

READ_KEYS_ENV = "CLARA_API_KEYS"
WRITE_KEYS_ENV = "CLARA_WRITE_KEYS"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ServerSettings:
    """What one server process allows and how it batches.

    Attributes:
        model_name: The id clients pass as ``model`` (and ``GET /v1/models`` lists).
        read_keys: Keys that may search and answer.
        write_keys: Keys that may also index and delete (a write key can read too).
        max_batch: Most chat requests answered by one generator call (1 = one at a time).
        batch_window_ms: How long an idle generator waits for more requests before answering the first one.
        max_tokens_limit: Largest ``max_tokens`` a request may ask for.
        default_max_tokens: ``max_tokens`` when a request gives none.
        max_request_bytes: Largest request body; a larger one gets 413.
        max_concurrent: Requests that touch the model at once (queued or running); more get 429.
        max_documents: Most documents in one ``/v1/index`` request or one chat request's ``clara_documents``.
        max_k: Largest ``k`` a search or chat request may ask for.
        cors_origins: Origins allowed by CORS; empty (default) means no CORS headers at all.
    """

    model_name: str = "clara"
    read_keys: frozenset[str] = field(default_factory=frozenset)
    write_keys: frozenset[str] = field(default_factory=frozenset)
    max_batch: int = 8
    batch_window_ms: float = 5.0
    max_tokens_limit: int = 512
    default_max_tokens: int | None = None
    max_request_bytes: int = 1_000_000
    max_concurrent: int = 64
    max_documents: int = 256
    max_k: int = 64
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_tokens_limit", "max_request_bytes", "max_concurrent", "max_documents", "max_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                msg = f"{name} must be a positive int, got {value!r}"
                raise ConfigError(msg)
        if self.batch_window_ms < 0:
            msg = f"batch_window_ms must be >= 0, got {self.batch_window_ms!r}"
            raise ConfigError(msg)
        if self.default_max_tokens is not None and not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            msg = f"default_max_tokens must be in 1..{self.max_tokens_limit}, got {self.default_max_tokens!r}"
            raise ConfigError(msg)

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must carry a key (any key is configured)."""
        return bool(self.read_keys or self.write_keys)


def parse_keys(text: str) -> frozenset[str]:
    """Keys separated by commas, whitespace or newlines; ``#`` starts a comment line in a file."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return frozenset(k for k in " ".join(lines).replace(",", " ").split() if k)


def load_keys(env_var: str, path: str | Path | None = None) -> frozenset[str]:
    """The keys of an environment variable plus those of a file (if given).

    Raises:
        ConfigError: the file does not exist or cannot be read.
    """
    keys = parse_keys(os.environ.get(env_var, ""))
    if path is not None:
        try:
            keys |= parse_keys(Path(path).read_text())
        except OSError as err:
            msg = f"cannot read the key file {str(path)!r}: {err.strerror}"
            raise ConfigError(msg) from err
    return keys


def check_exposure(host: str, settings: ServerSettings, allow_no_auth: bool) -> None:
    """Refuse to serve a non-loopback address without keys unless explicitly allowed.

    Raises:
        ConfigError: ``host`` is not a loopback address, no key is configured and ``allow_no_auth`` is False.
    """
    if host not in LOOPBACK and not settings.auth_enabled and not allow_no_auth:
        msg = (
            f"--host {host} exposes the server beyond this machine but no API key is configured; set "
            f"{READ_KEYS_ENV}/{WRITE_KEYS_ENV} (or --api-key-file/--write-key-file), or pass --allow-no-auth"
        )
        raise ConfigError(msg)

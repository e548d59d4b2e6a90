"""The emulator's settings: users, shares, limits, faults and network, checked when made."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bulkdrive import protocol
from bulkdrive.emulator import faults as fault_kinds
from bulkdrive.emulator.network import NetworkModel

DEFAULT_TOKEN_IDLE_SECONDS = 1800.0


SAFE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class User:
    name: str
    password: str

    def __repr__(self) -> str:  # never show the password
        return f"User(name={self.name!r}, password=***)"


@dataclass(frozen=True)
class Share:
    share_id: str
    name: str
    public: bool = False
    readonly: bool = False
    #: Who the share belongs to; "" means the first configured user (the one who set it up).
    owner: str = ""


@dataclass(frozen=True)
class EmulatorConfig:
    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    users: tuple[User, ...] = (User("demo", "demo"),)
    shares: tuple[Share, ...] = (Share("1", "demo"),)
    quota: int | None = None
    max_chunk_bytes: int = 32 * 1024 * 1024
    token_idle_seconds: float = DEFAULT_TOKEN_IDLE_SECONDS
    session_ttl_seconds: float = 86400.0
    strict_parents: bool = False
    #: Refuse names a Windows file system refuses (400), as a Windows-backed server does.
    windows_names: bool = False
    json_dialect: protocol.Format = protocol.Format.JSON
    fault_rate: float = 0.0
    fault_seed: int = 0
    faults: tuple[str, ...] = ()
    fault_delay_seconds: float = 0.5
    #: A file that gets one JSON line per request (method, path, status, bytes, duration).
    request_log: Path | None = None
    #: Serve HTTPS with this certificate chain and private key (PEM files), both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: How long a re-initiate waits for a request in flight on the same session before it is
    #: refused as busy (409 without requestId).
    busy_wait_seconds: float = 30.0
    #: Latency, a cap on requests being processed, a link's bandwidth (serve --latency ...).
    network: NetworkModel = field(default_factory=NetworkModel)

    def __post_init__(self) -> None:
        check_config(self)


def check_config(config: EmulatorConfig) -> None:
    """ValueError with a one-line message for the first bad setting."""
    if not 0 <= config.port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, not {config.port}")
    names = [u.name for u in config.users]
    for name in names:
        if not name or name in (".", "..") or any(c in name for c in "/\\\x00:"):
            raise ValueError(f"invalid user name {name!r}")
    if len(set(names)) != len(names):
        raise ValueError("user names must be unique")
    ids = [s.share_id for s in config.shares]
    for share_id in ids:
        if not SAFE_ID.match(share_id) or share_id.lower() == "drive":
            raise ValueError(
                f"invalid share id {share_id!r}: use letters, digits, '_' or '-' (not 'drive')"
            )
    if len(set(ids)) != len(ids):
        raise ValueError("share ids must be unique")
    if config.quota is not None and config.quota < 0:
        raise ValueError("quota must not be negative")
    if config.max_chunk_bytes <= 0:
        raise ValueError("max chunk bytes must be positive")
    if config.token_idle_seconds <= 0 or config.session_ttl_seconds <= 0:
        raise ValueError("token idle and session TTL seconds must be positive")
    if config.json_dialect not in (protocol.Format.JSON, protocol.Format.WRAPPED):
        raise ValueError("json dialect must be flat (JSON) or wrapped")
    if not 0.0 <= config.fault_rate <= 1.0:
        raise ValueError(f"fault rate must be between 0 and 1, not {config.fault_rate}")
    fault_kinds.parse_kinds(config.faults)
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ValueError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    if config.fault_delay_seconds < 0:
        raise ValueError("fault delay must not be negative")
    if config.busy_wait_seconds < 0:
        raise ValueError("busy wait must not be negative")

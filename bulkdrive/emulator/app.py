"""The emulator's HTTP side: configuration, routes of the Edge Drive API, the running server.

Every route is served under the three prefixes of spec §1, with the fixed words of a path
matched without regard to case; routing is done here rather than by aiohttp's router for that
reason. Request bodies of uploads are streamed into the store, never read whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import json
import re
import secrets
import socket
import ssl
import struct
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from bulkdrive import protocol
from bulkdrive.emulator import faults as fault_kinds
from bulkdrive.emulator.database import StoredToken
from bulkdrive.emulator.faults import FaultInjector
from bulkdrive.emulator.network import Network, NetworkModel
from bulkdrive.emulator.refusals import BUSY_SESSION, BodyIncomplete, StoreError
from bulkdrive.emulator.store import Session, Store, Target

PREFIXES = (("webconsole", "api"), ("commandcenter", "api"), ("searchsvc", "cvwebservice.svc"))
DEFAULT_TOKEN_IDLE_SECONDS = 1800.0
#: Largest Login / RenewLoginToken / createfolder body read.
SMALL_BODY_LIMIT = 64 * 1024
#: Whole files up to this size that arrive in one request are stored in one step.
ONE_STEP_FILE_BYTES = 1024 * 1024
#: Distinct request paths whose route is remembered (a bound: clients choose the paths).
ROUTE_CACHE_SIZE = 4096
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_DIGITS = re.compile(r"^[0-9]+$")
#: What a Windows file system refuses in a name (--windows-names).
_WINDOWS_CHARACTERS = re.compile(r'[<>:"|?*\x00-\x1f]')
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"{kind}{digit}" for kind in ("COM", "LPT") for digit in "123456789\u00b9\u00b2\u00b3"]
)


# --- configuration ------------------------------------------------------------------------


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
        if not _SAFE_ID.match(share_id) or share_id.lower() == "drive":
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


# --- what tests can read ------------------------------------------------------------------


@dataclass(frozen=True)
class UploadRecord:
    """One upload request as the emulator handled it."""

    kind: str  # "initiate" | "chunk" | "fullFile"
    share: str  # shareId, or "drive:<user>" for a user's own drive
    path: str  # remote path, backslash-separated
    request_id: str
    offset_before: int
    body_bytes: int  # bytes applied to the file by this request
    status: int  # the status answered (or that would have been, for lost-response)
    eof: bool
    fault: str | None = None


@dataclass(frozen=True)
class EmulatorStatistics:
    requests: int
    logins: int
    failed_logins: int
    renewals: int
    unauthorized: int
    initiates: int
    chunks: int
    full_files: int
    conflicts: int
    completed_files: int
    integrity_failures: int
    bytes_received: int
    faults: Mapping[str, int]
    faults_injected: int
    active_sessions: int
    active_tokens: int
    listings: int = 0  # list requests answered (one per page)


@dataclass
class _Counters:
    requests: int = 0
    logins: int = 0
    failed_logins: int = 0
    renewals: int = 0
    unauthorized: int = 0
    initiates: int = 0
    chunks: int = 0
    full_files: int = 0
    conflicts: int = 0
    completed_files: int = 0
    integrity_failures: int = 0
    bytes_received: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    listings: int = 0


@dataclass
class _Token:
    user: str
    device_id: str
    idle_seconds: float
    last_used: float


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class _Refusal(Exception):
    """An early answer of a handler: status and message, rendered in the endpoint's format."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class _Ctx:
    fmt: protocol.Format
    share_id: str | None


Handler = Callable[[web.Request, _Ctx], Awaitable[web.StreamResponse]]


#: protocol.render's JSON is json.dumps(..., ensure_ascii=False); these make the same text.
_JSON = json.JSONEncoder(ensure_ascii=False)
_json_string = json.encoder.encode_basestring


def _flat_json(fields: protocol.Fields) -> bytes:
    """The text json.dumps(fields, ensure_ascii=False) gives, for a flat object of strings,
    integers and booleans, written directly: json.dumps builds an encoder per call, which
    cost more than the rest of a small upload's reply."""
    parts: list[str] = []
    for key, scalar in fields.items():
        value: object = scalar  # Fields promise str, int or bool; anything else falls back
        if isinstance(value, str):
            text = _json_string(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = int.__repr__(value)
        else:
            return _JSON.encode(dict(fields)).encode("utf-8")
        parts.append(f"{_json_string(key)}: {text}")
    return ("{" + ", ".join(parts) + "}").encode("utf-8")


def _header(request: web.Request, name: str) -> str | None:
    values = request.headers.getall(name, None)
    if not values:
        return None
    if len(values) == 1:
        return protocol.last_value(values[0])
    return protocol.last_value(",".join(values))


def _queries(request: web.Request) -> dict[str, str]:
    """Query parameters by lower-cased name; the last value wins."""
    return {key.lower(): value for key, value in request.query.items()}


def _query(request: web.Request, name: str) -> str | None:
    """Query parameters: names ignoring case, the last value wins."""
    return _queries(request).get(name.lower())


@functools.lru_cache(maxsize=1024)
def _parent_folder(raw: str) -> tuple[tuple[str, ...] | None, str | None]:
    """A ParentFolderPath header decoded and split (many files share one): the components,
    else (None, None) when it is not base64 of UTF-8, or (None, why) when the path is invalid.
    """
    try:
        text = protocol.decode_name(raw)
    except ValueError:
        return None, None
    try:
        return protocol.split_remote_path(text), None
    except ValueError as exc:
        return None, str(exc)


def windows_name_problem(name: str) -> str | None:
    """Why a Windows file system would refuse `name`, or None when it takes it."""
    bad = _WINDOWS_CHARACTERS.search(name)
    if bad is not None:
        return f"it contains {bad.group()!r}"
    if name.endswith((".", " ")):
        return "it ends with a dot or a space"
    # CON, con.txt and "NUL .tar.gz" alike: the part before the first dot, trailing spaces off.
    if name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        return "it is a reserved device name"
    return None


def _is_eof(raw: str | None) -> bool:
    return raw is not None and raw.strip().lower() in ("1", "true")


#: How a fault ended a request without an answer ("reset" or "closed"), for the request log.
_DROPPED = web.RequestKey("bulkdrive.dropped", str)


def _drop_connection(request: web.Request, *, reset: bool) -> web.Response:
    """Close the connection without an answer; the returned response is never sent."""
    request[_DROPPED] = "reset" if reset else "closed"
    transport = request.transport
    if transport is not None:
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
    return web.Response(status=500)


class RequestLog:
    """`serve --log-requests FILE`: one JSON object per line and request, appended and flushed
    as each request ends, so that a test or a person can read what the server saw while it runs.

    Fields: `time` (ISO-8601 UTC, when the request arrived), `method`, `path` (without the
    query), `query`, `status` (0 when no answer was sent: a dropped connection or a client that
    went away), `bytes` (request body bytes received), `duration` (seconds), and `dropped`
    ("reset" or "closed") for the connections a fault closed without an answer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - close()

    def write(self, entry: Mapping[str, object]) -> None:
        self._file.write(json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        self._file.close()


def _utc_stamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the application ----------------------------------------------------------------------


class Emulator:
    """A running emulator: its settings, its URL and what it has seen."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        root = Path(config.root).resolve()
        self.root = root
        self.shares = {s.share_id: s for s in config.shares}
        self.users = {u.name: u for u in config.users}
        targets = [
            Target(s.share_id, root / s.share_id, f"share {s.share_id}") for s in config.shares
        ]
        targets += [
            Target(f"drive:{u.name}", root / "drive" / u.name, f"the drive of {u.name}")
            for u in config.users
        ]
        self.store = Store(
            root,
            targets,
            session_ttl_seconds=config.session_ttl_seconds,
            quota=config.quota,
        )
        self.faults = FaultInjector(
            config.fault_rate, config.fault_seed, config.faults, config.fault_delay_seconds
        )
        self.network = Network(config.network, self._busy)
        self.upload_log: deque[UploadRecord] = deque(maxlen=100_000)
        self.port = 0
        self.base_url = ""
        self._counters = _Counters()
        self._tokens: dict[str, _Token] = {}
        self._runner: web.AppRunner | None = None
        self.request_log: RequestLog | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._route_cache: dict[str, tuple[frozenset[str], Handler, str | None] | None] = {}
        self._routes: list[tuple[tuple[str, ...], frozenset[str], Handler]] = [
            (("login",), frozenset({"POST"}), self._login),
            (("renewlogintoken",), frozenset({"POST"}), self._renew),
            (("logout",), frozenset({"POST"}), self._logout),
            (("drive", "share"), frozenset({"GET"}), self._list_shares),
            (
                ("drive", "share", "{}", "file", "action", "upload"),
                frozenset({"POST"}),
                self._share_upload,
            ),
            (("drive", "file", "action", "upload"), frozenset({"POST"}), self._drive_upload),
            (
                ("contentstore", "publicshare", "{}", "file", "action", "upload"),
                frozenset({"POST"}),
                self._public_upload,
            ),
            (
                ("drive", "publicshare", "{}", "file", "action", "upload"),
                frozenset({"POST"}),
                self._public_upload,
            ),
            (
                ("drive", "share", "{}", "action", "createfolder"),
                frozenset({"POST"}),
                self._create_folder,
            ),
            (("drive", "action", "createfolder"), frozenset({"POST"}), self._create_folder),
            (("drive", "share", "{}", "action", "metadata"), frozenset({"GET"}), self._metadata),
            (("drive", "action", "metadata"), frozenset({"GET"}), self._metadata),
            (("drive", "share", "{}", "action", "list"), frozenset({"POST", "GET"}), self._list),
            (("drive", "action", "list"), frozenset({"POST", "GET"}), self._list),
        ]

    # -- public interface

    def url(self, prefix: str = "/webconsole/api") -> str:
        scheme = "https" if self.config.tls_cert is not None else "http"
        return f"{scheme}://{self.config.host}:{self.port}{prefix}"

    def statistics(self) -> EmulatorStatistics:
        c = self._counters
        return EmulatorStatistics(
            requests=c.requests,
            logins=c.logins,
            failed_logins=c.failed_logins,
            renewals=c.renewals,
            unauthorized=c.unauthorized,
            initiates=c.initiates,
            chunks=c.chunks,
            full_files=c.full_files,
            conflicts=c.conflicts,
            completed_files=c.completed_files,
            integrity_failures=c.integrity_failures,
            bytes_received=c.bytes_received,
            faults=dict(c.faults),
            faults_injected=sum(c.faults.values()),
            active_sessions=self.store.active_sessions,
            active_tokens=len(self._tokens),
            listings=c.listings,
        )

    async def start(self) -> None:
        await self.store.open()
        now = time.time()
        for stored in self.store.tokens:
            self._tokens[stored.digest] = _Token(
                stored.user, stored.device_id, stored.idle_seconds, now
            )
        app = web.Application(
            middlewares=[] if self.config.network.is_direct else [self.network.middleware]
        )
        if self.config.request_log is not None:
            self.request_log = RequestLog(Path(self.config.request_log))
            app.router.add_route("*", "/{tail:.*}", self._logged_dispatch)
        else:
            app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.host, self.config.port, ssl_context=self._tls_context()
        )
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        self.base_url = self.url()
        self._sweeper = asyncio.create_task(self._sweep())

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None or self.config.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot use --tls-cert/--tls-key: {exc}") from None
        return context

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.store.close()
        if self.request_log is not None:
            self.request_log.close()
            self.request_log = None

    async def _sweep(self) -> None:
        period = max(0.05, min(60.0, self.config.session_ttl_seconds / 2))
        while True:
            await asyncio.sleep(period)
            await self.store.expire_idle()
            now = time.time()
            stale = [
                d
                for d, t in self._tokens.items()
                if now - t.last_used > t.idle_seconds + self.config.session_ttl_seconds
            ]
            for digest in stale:
                del self._tokens[digest]
                await self.store.delete_token(digest)

    # -- responses

    def _reply(
        self,
        fmt: protocol.Format,
        root: str,
        fields: protocol.Fields,
        *,
        status: int = 200,
        children: Mapping[str, list[protocol.Fields]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        if fmt is protocol.Format.JSON and not children:
            body = _flat_json(fields)
        else:
            body = protocol.render(fmt, root, fields, children)
        all_headers = {"Content-Type": protocol.CONTENT_TYPES[fmt], **(headers or {})}
        return web.Response(body=body, status=status, headers=all_headers)

    def _error(
        self, fmt: protocol.Format, root: str, status: int, message: str, **extra: str | int
    ) -> web.Response:
        fields: dict[str, str | int] = {**extra, "errorCode": status, "errorString": message}
        return self._reply(fmt, root, fields, status=status)

    def _busy(self, request: web.Request) -> web.Response:
        fmt = protocol.negotiate(_header(request, "Accept"), self.config.json_dialect)
        return self._error(fmt, protocol.GENERIC_RESP, 503, "server busy: too many requests")

    def _denied(self, fmt: protocol.Format) -> web.Response:
        self._counters.unauthorized += 1
        return self._reply(
            fmt,
            protocol.GENERIC_RESP,
            {"errorMessage": "Access denied", "errorCode": 5},
            status=401,
        )

    # -- routing

    async def _logged_dispatch(self, request: web.Request) -> web.StreamResponse:
        arrived = time.time()
        started = time.perf_counter()
        status = 0
        try:
            response = await self._dispatch(request)
            if _DROPPED not in request:
                status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            entry: dict[str, object] = {
                "time": _utc_stamp(arrived),
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "status": status,
                "bytes": request.content.total_bytes,
                "duration": round(time.perf_counter() - started, 6),
            }
            if _DROPPED in request:
                entry["dropped"] = request[_DROPPED]
            if self.request_log is not None:
                self.request_log.write(entry)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self._counters.requests += 1
        fmt = protocol.negotiate(_header(request, "Accept"), self.config.json_dialect)
        raw_path = request.rel_url.raw_path
        try:
            route = self._route_cache[raw_path]
        except KeyError:
            route = self._route(raw_path)
            if len(self._route_cache) >= ROUTE_CACHE_SIZE:
                self._route_cache.clear()
            self._route_cache[raw_path] = route
        if route is None:
            return self._error(fmt, protocol.GENERIC_RESP, 404, "no such API endpoint")
        methods, handler, share_id = route
        if request.method not in methods:
            return self._error(fmt, protocol.GENERIC_RESP, 405, "method not allowed")
        return await handler(request, _Ctx(fmt, share_id))

    def _route(self, raw_path: str) -> tuple[frozenset[str], Handler, str | None] | None:
        """The methods, handler and shareId of a request path; None when nothing matches."""
        segments = [unquote(s) for s in raw_path.split("/") if s]
        lowered = [s.lower() for s in segments]
        rest: list[str] | None = None
        for prefix in PREFIXES:
            if tuple(lowered[: len(prefix)]) == prefix:
                rest = segments[len(prefix) :]
                break
        if rest is None:
            return None
        for pattern, methods, handler in self._routes:
            if len(pattern) != len(rest):
                continue
            share_id: str | None = None
            for word, given in zip(pattern, rest, strict=True):
                if word == "{}":
                    share_id = given
                elif word != given.lower():
                    break
            else:
                return methods, handler, share_id
        return None

    # -- authentication

    def _user_of(self, request: web.Request) -> str | None:
        token = _header(request, protocol.AUTHTOKEN)
        if not token:
            return None
        entry = self._tokens.get(_token_digest(token))
        now = time.time()
        if entry is None or now - entry.last_used > entry.idle_seconds:
            return None
        entry.last_used = now
        return entry.user

    async def _small_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > SMALL_BODY_LIMIT:
            raise _Refusal(400, "request body too large")
        parts: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > SMALL_BODY_LIMIT:
                raise _Refusal(400, "request body too large")
            parts.append(chunk)
        return b"".join(parts)

    async def _request_fields(self, request: web.Request) -> dict[str, str]:
        """The fields of an XML or JSON request body (flat, or wrapped in its root name)."""
        body = await self._small_body(request)
        node = protocol.parse_body(body)
        if not node.fields and not node.children:
            raise _Refusal(400, "the body is not an XML element or a JSON object")
        if not node.fields and len(node.children) == 1:
            (only,) = node.children.values()
            if len(only) == 1:
                node = only[0]
        return dict(node.fields)

    async def _login(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        root = protocol.LOGIN_RESP
        try:
            fields = await self._request_fields(request)
            username = fields.get("username")
            encoded = fields.get("password")
            if not username or encoded is None:
                raise _Refusal(400, "username and password are required")
            try:
                password = protocol.decode_name(encoded)
            except ValueError:
                raise _Refusal(400, "the password must be base64 of UTF-8 text") from None
            idle = self.config.token_idle_seconds
            if fields.get("timeout"):
                try:
                    minutes = float(fields["timeout"])
                except ValueError:
                    raise _Refusal(400, "timeout must be a number of minutes") from None
                if minutes <= 0:
                    raise _Refusal(400, "timeout must be positive")
                # Login's timeout wins, but never beyond a shortened --token-idle-seconds.
                if idle < DEFAULT_TOKEN_IDLE_SECONDS:
                    idle = min(idle, minutes * 60)
                else:
                    idle = minutes * 60
        except _Refusal as exc:
            return self._error(ctx.fmt, root, exc.status, exc.message)
        user = self.users.get(username)
        if user is None or not secrets.compare_digest(
            user.password.encode("utf-8", "surrogateescape"),
            password.encode("utf-8", "surrogateescape"),
        ):
            self._counters.failed_logins += 1
            return self._reply(
                ctx.fmt,
                root,
                {},
                children={
                    "errList": [
                        {"errorCode": 1116, "errLogMessage": "Invalid Username or Password"}
                    ]
                },
            )
        token = await self._new_token(username, fields.get("deviceId", ""), idle)
        self._counters.logins += 1
        return self._reply(
            ctx.fmt,
            root,
            {
                "token": token,
                "userName": username,
                "userGUID": uuid.uuid5(uuid.NAMESPACE_OID, f"bulkdrive:{username}").hex,
                "aliasName": "1",
            },
        )

    async def _new_token(self, user: str, device_id: str, idle: float) -> str:
        token = "QSDK " + secrets.token_hex(96)
        digest = _token_digest(token)
        self._tokens[digest] = _Token(user, device_id, idle, time.time())
        await self.store.save_token(StoredToken(digest, user, device_id, idle))
        return token

    async def _renew(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        try:
            fields = await self._request_fields(request)
        except _Refusal as exc:
            return self._error(ctx.fmt, protocol.LOGIN_RESP, exc.status, exc.message)
        old = fields.get("sessionId") or ""
        entry = self._tokens.get(_token_digest(old)) if old else None
        # An expired but known token may be renewed; the deviceId must match Login's.
        if entry is None or fields.get("deviceId", "") != entry.device_id:
            return self._denied(ctx.fmt)
        token = await self._new_token(entry.user, entry.device_id, entry.idle_seconds)
        self._counters.renewals += 1
        return self._reply(ctx.fmt, protocol.LOGIN_RESP, {"token": token, "userName": entry.user})

    async def _logout(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        if self._user_of(request) is None:
            return self._denied(ctx.fmt)
        token = _header(request, protocol.AUTHTOKEN) or ""
        digest = _token_digest(token)
        self._tokens.pop(digest, None)
        await self.store.delete_token(digest)
        return web.Response(text="User logged out", content_type="text/plain")

    # -- shares and targets

    def _share_target(self, share_id: str) -> Target:
        return self.store.targets[share_id]

    async def _list_shares(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        if self._user_of(request) is None:
            return self._denied(ctx.fmt)
        wanted = _query(request, "shareId")
        default_owner = self.config.users[0].name if self.config.users else ""
        entries: list[protocol.Fields] = [
            {
                "syncWebFolderId": s.share_id,
                "syncWebFolderName": s.name,
                "dirDelim": "\\",
                "permission": "view" if s.readonly else "edit",
                "public": s.public,
                "owner": s.owner or default_owner,
            }
            for s in self.config.shares
            if wanted is None or s.share_id == wanted
        ]
        return self._reply(
            ctx.fmt, protocol.SHARES_RESP, {"errorCode": 0}, children={"shareFolder": entries}
        )

    def _resolve_share(self, share_id: str | None, *, upload: bool) -> Target:
        share = self.shares.get(share_id or "")
        if share is None:
            raise _Refusal(404, f"share {share_id} does not exist")
        if upload and share.readonly:
            raise _Refusal(403, f"share {share_id} is view-only; uploads are not allowed")
        return self._share_target(share.share_id)

    def _authorized_target(
        self, request: web.Request, ctx: _Ctx, *, upload: bool
    ) -> Target | web.Response:
        user = self._user_of(request)
        if user is None:
            return self._denied(ctx.fmt)
        if ctx.share_id is None:
            return self.store.targets[f"drive:{user}"]
        return self._resolve_share(ctx.share_id, upload=upload)

    # -- folders, properties, listing

    async def _create_folder(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        root = protocol.FILE_RESOURCE_RESP
        try:
            target = self._authorized_target(request, ctx, upload=True)
            if isinstance(target, web.Response):
                return target
            fields = await self._request_fields(request)
            name = fields.get("name", "")
            try:
                parts = protocol.split_remote_path(name)
                parent = protocol.split_remote_path(fields.get("parentPath") or "\\")
            except ValueError as exc:
                raise _Refusal(400, f"invalid path: {exc}") from None
            if len(parts) != 1 or parts[0] != name:
                raise _Refusal(400, "name must be one folder name, without separators")
            self._check_windows_names((*parent, name))
            resource = await self.store.create_folder(
                target, parent, name, self.config.strict_parents
            )
        except _Refusal as exc:
            return self._error(ctx.fmt, root, exc.status, exc.message)
        except StoreError as exc:
            return self._error(ctx.fmt, root, exc.status, exc.message)
        return self._reply(
            ctx.fmt, root, {"errorCode": 0}, status=201, children={"fileResource": [resource]}
        )

    def _path_param(self, request: web.Request) -> tuple[str, ...]:
        raw = _query(request, "path")
        if raw is None:
            raise _Refusal(400, "the path parameter is required")
        try:
            return protocol.split_remote_path(raw)
        except ValueError as exc:
            raise _Refusal(400, f"invalid path: {exc}") from None

    async def _metadata(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        root = protocol.FILE_RESOURCE_RESP
        try:
            target = self._authorized_target(request, ctx, upload=False)
            if isinstance(target, web.Response):
                return target
            parts = self._path_param(request)
            resource = await self.store.metadata(target, parts)
        except (_Refusal, StoreError) as exc:
            status = exc.status
            return self._error(ctx.fmt, root, status, exc.message)
        return self._reply(ctx.fmt, root, {"errorCode": 0}, children={"fileResource": [resource]})

    async def _list(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        root = protocol.FILE_RESOURCE_RESP
        try:
            target = self._authorized_target(request, ctx, upload=False)
            if isinstance(target, web.Response):
                return target
            parts = self._path_param(request)
            limit = self._paging(request, "limit", 50)
            offset = self._paging(request, "offset", 0)
            total, items = await self.store.list_folder(target, parts, offset, limit)
            self._counters.listings += 1
        except (_Refusal, StoreError) as exc:
            return self._error(ctx.fmt, root, exc.status, exc.message)
        return self._reply(
            ctx.fmt, root, {"totalCount": total, "errorCode": 0}, children={"fileResource": items}
        )

    @staticmethod
    def _paging(request: web.Request, name: str, default: int) -> int:
        raw = _header(request, name)
        if raw is None or raw == "":
            return default
        if not _DIGITS.match(raw):
            raise _Refusal(400, f"the {name} header must be a non-negative integer")
        return int(raw)

    # -- uploads

    async def _share_upload(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        return await self._upload(request, ctx, public=False)

    async def _drive_upload(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        return await self._upload(request, ctx, public=False)

    async def _public_upload(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        return await self._upload(request, ctx, public=True)

    async def _upload(self, request: web.Request, ctx: _Ctx, *, public: bool) -> web.StreamResponse:
        fmt = ctx.fmt
        root = protocol.UPLOAD_RESP
        queries = _queries(request)
        upload_type = (queries.get("uploadtype") or "").lower()
        request_id = queries.get("requestid") if upload_type == "chunkedfile" else None
        kind = "fullFile" if upload_type == "fullfile" else "chunk" if request_id else "initiate"
        share = ctx.share_id or ""
        eof = _is_eof(_header(request, protocol.FILE_EOF))
        fault = self.faults.draw()
        if fault is not None:
            self._counters.faults[fault] += 1
        if fault in (fault_kinds.FAULT_500, fault_kinds.FAULT_503):
            status = int(fault or 500)
            self._record(kind, share, "", request_id or "", 0, 0, status, eof, fault)
            response = self._error(fmt, root, status, "injected server fault")
            if status == 503:
                response.headers["Retry-After"] = "0"
            return response
        if fault == fault_kinds.FAULT_RESET:
            self._record(kind, share, "", request_id or "", 0, 0, 0, eof, fault)
            return _drop_connection(request, reset=True)
        if fault == fault_kinds.FAULT_DELAY:
            await asyncio.sleep(self.faults.delay_seconds)
        try:
            if public:
                found = self.shares.get(share)
                if found is None or not found.public:
                    raise _Refusal(404, f"public share {share} does not exist")
                target = self._resolve_share(share, upload=True)
            else:
                resolved = self._authorized_target(request, ctx, upload=True)
                if isinstance(resolved, web.Response):
                    self._record(kind, share, "", request_id or "", 0, 0, 401, eof, fault)
                    return resolved
                target = resolved
            if upload_type not in ("chunkedfile", "fullfile"):
                raise _Refusal(400, "uploadType must be chunkedFile or fullFile")
            length = request.content_length
            if length is not None and length > self.config.max_chunk_bytes:
                raise _Refusal(
                    413,
                    f"the body is larger than the largest accepted request "
                    f"({self.config.max_chunk_bytes} bytes)",
                )
            if request_id:
                response = await self._chunk(request, fmt, target, request_id, fault)
            else:
                response = await self._initiate(
                    request,
                    fmt,
                    target,
                    queries,
                    full_file=upload_type == "fullfile",
                    fault=fault,
                )
        except _Refusal as exc:
            self._record(kind, share, "", request_id or "", 0, 0, exc.status, eof, fault)
            return self._error(fmt, root, exc.status, exc.message)
        if fault == fault_kinds.FAULT_LOST_RESPONSE:
            return _drop_connection(request, reset=False)
        return response

    def _record(
        self,
        kind: str,
        share: str,
        path: str,
        request_id: str,
        offset_before: int,
        body_bytes: int,
        status: int,
        eof: bool,
        fault: str | None,
    ) -> None:
        self.upload_log.append(
            UploadRecord(
                kind, share, path, request_id, offset_before, body_bytes, status, eof, fault
            )
        )

    async def _initiate(
        self,
        request: web.Request,
        fmt: protocol.Format,
        target: Target,
        queries: Mapping[str, str],
        *,
        full_file: bool,
        fault: str | None,
    ) -> web.Response:
        root = protocol.UPLOAD_RESP
        kind = "fullFile" if full_file else "initiate"
        if full_file:
            self._counters.full_files += 1
        else:
            self._counters.initiates += 1
        name, parent, size, mtime, guid = self._file_headers(request)
        path = protocol.join_remote_path((*parent, name))
        eof = True if full_file else _is_eof(_header(request, protocol.FILE_EOF))
        length = request.content_length
        force = protocol.is_true(queries.get("forcerestart"))
        verify = protocol.is_true(queries.get("verifyblocklevelfileintegrity"))

        def done(status: int, applied: int = 0, request_id: str = "") -> None:
            self._record(kind, target.key, path, request_id, 0, applied, status, eof, fault)

        if length is not None and length > size:
            raise _Refusal(400, "the body is longer than FileSize")
        if full_file and length is not None and length != size:
            raise _Refusal(400, "a full-file upload's body must be exactly FileSize bytes")
        if eof and length is not None and length != size:
            raise _Refusal(400, "FileEOF is 1 but the body has fewer bytes than FileSize")
        block_hash, full_hash = self._hash_headers(request)
        if eof and verify and block_hash is None:
            raise _Refusal(400, "BlockLevelHash is required on the last chunk")

        existing = await self._settled(target.key, parent, name)
        if existing is not None:
            if existing.busy:
                # Still receiving after the wait: its offset is not known yet (§5's "busy").
                self._counters.conflicts += 1
                raise _Refusal(409, BUSY_SESSION)
            if not force:
                self._counters.conflicts += 1
                done(409, request_id=existing.request_id)
                return self._error(
                    fmt,
                    root,
                    409,
                    "an unfinished upload session exists for this file; resume it from "
                    "chunkOffset or use forceRestart=true",
                    requestId=existing.request_id,
                    chunkOffset=existing.offset,
                )
            await self.store.discard(existing)
        if eof and length is not None and length <= ONE_STEP_FILE_BYTES:
            return await self._small_file(
                request,
                fmt,
                target,
                parent,
                name,
                kind=kind,
                length=length,
                mtime=mtime,
                guid=guid,
                verify=verify,
                block_hash=block_hash,
                full_hash=full_hash,
                fault=fault,
            )
        try:
            session = await self.store.begin(
                target,
                parent,
                name,
                size=size,
                mtime=mtime,
                verify_block=verify,
                guid=guid,
                strict_parents=self.config.strict_parents,
                register=not full_file,
            )
        except StoreError as exc:
            if exc.status == 409 and exc.request_id:
                self._counters.conflicts += 1
                done(409, request_id=exc.request_id)
                return self._error(
                    fmt,
                    root,
                    409,
                    exc.message,
                    requestId=exc.request_id,
                    chunkOffset=exc.chunk_offset or 0,
                )
            done(exc.status)
            return self._error(fmt, root, exc.status, exc.message)
        session.busy = True
        session.idle.clear()
        try:
            try:
                applied, digest = await self.store.write_body(
                    session,
                    request.content.readany,
                    limit=size,
                    max_bytes=self.config.max_chunk_bytes,
                    want_digest=verify,
                )
                if eof and applied != size:
                    raise StoreError(400, "FileEOF is 1 but the total differs from FileSize")
                await self.store.commit(session, applied, digest, persist=not eof)
            except (StoreError, BodyIncomplete) as exc:
                await self.store.discard(session, registered=not full_file)
                status = exc.status if isinstance(exc, StoreError) else 400
                message = exc.message if isinstance(exc, StoreError) else "body cut short"
                done(status, request_id=session.request_id)
                return self._error(fmt, root, status, message)
            self._counters.bytes_received += applied
            if not eof:
                done(200, applied, session.request_id)
                return self._reply(
                    fmt,
                    root,
                    {
                        "requestId": session.request_id,
                        "chunkOffset": session.offset,
                        "errorCode": 0,
                    },
                )
            return await self._complete(
                fmt,
                session,
                kind=kind,
                offset_before=0,
                applied=applied,
                block_hash=block_hash,
                full_hash=full_hash,
                registered=not full_file,
                fault=fault,
            )
        finally:
            session.busy = False
            session.idle.set()

    async def _small_file(
        self,
        request: web.Request,
        fmt: protocol.Format,
        target: Target,
        parent: tuple[str, ...],
        name: str,
        *,
        kind: str,
        length: int,
        mtime: int,
        guid: str | None,
        verify: bool,
        block_hash: str | None,
        full_hash: str | None,
        fault: str | None,
    ) -> web.Response:
        """A whole small file in one request: read it (one buffer at most), store it at once."""
        root = protocol.UPLOAD_RESP
        path = protocol.join_remote_path((*parent, name))
        try:
            # An empty body has an empty stream, on which readexactly(0) would fail.
            body = await request.content.readexactly(length) if length else b""
        except Exception:
            self._record(kind, target.key, path, "", 0, 0, 400, True, fault)
            return self._error(fmt, root, 400, "body cut short")
        try:
            request_id, completed = await self.store.store_small(
                target,
                parent,
                name,
                body,
                mtime=mtime,
                guid=guid,
                verify_block=verify,
                block_hash=block_hash,
                full_hash=full_hash,
                strict_parents=self.config.strict_parents,
            )
        except StoreError as exc:
            if "integrity" in exc.message:
                self._counters.integrity_failures += 1
            self._record(kind, target.key, path, "", 0, 0, exc.status, True, fault)
            return self._error(fmt, root, exc.status, exc.message)
        self._counters.bytes_received += length
        self._counters.completed_files += 1
        self._record(kind, target.key, path, request_id, 0, length, 200, True, fault)
        fields: dict[str, str | int] = {
            "requestId": request_id,
            "chunkOffset": completed.size,
            "errorCode": 0,
            "fileGUID": completed.guid,
        }
        if completed.integrity_verified:
            fields["fileIntegrityVerified"] = 1
        return self._reply(fmt, root, fields)

    async def _settled(self, target: str, parent: tuple[str, ...], name: str) -> Session | None:
        """The unfinished session of a file, after any chunk in flight on it has ended."""
        session = await self.store.find_for(target, parent, name)
        if session is not None and session.busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.idle.wait(), self.config.busy_wait_seconds)
            session = await self.store.find_for(target, parent, name)
        return session

    def _check_windows_names(self, names: tuple[str, ...]) -> None:
        """With --windows-names, refuse what a Windows-backed server's file system would."""
        if not self.config.windows_names:
            return
        for name in names:
            problem = windows_name_problem(name)
            if problem is not None:
                raise _Refusal(
                    400, f"the name {name!r} is not allowed on a Windows file system: {problem}"
                )

    def _file_headers(
        self, request: web.Request
    ) -> tuple[str, tuple[str, ...], int, int, str | None]:
        raw_name = _header(request, protocol.FILE_NAME)
        raw_size = _header(request, protocol.FILE_SIZE)
        raw_parent = _header(request, protocol.PARENT_FOLDER)
        if not raw_name:
            raise _Refusal(400, "the FileName header is required")
        if raw_size is None or raw_size == "":
            raise _Refusal(400, "the FileSize header is required")
        if raw_parent is None or raw_parent == "":
            raise _Refusal(400, "the ParentFolderPath header is required")
        try:
            name = protocol.decode_name(raw_name)
        except ValueError:
            raise _Refusal(400, "FileName is not base64 of UTF-8 text") from None
        parent, parent_error = _parent_folder(raw_parent)
        if parent is None and parent_error is None:
            raise _Refusal(400, "ParentFolderPath is not base64 of UTF-8 text")
        try:
            name_parts = protocol.split_remote_path(name)
        except ValueError as exc:
            raise _Refusal(400, f"invalid path: {exc}") from None
        if parent is None:
            raise _Refusal(400, f"invalid path: {parent_error}")
        if len(name_parts) != 1 or name_parts[0] != name:
            raise _Refusal(400, "FileName must be one file name, without separators")
        self._check_windows_names((*parent, name))
        if not _DIGITS.match(raw_size):
            raise _Refusal(400, "FileSize must be a non-negative integer")
        size = int(raw_size)
        raw_mtime = _header(request, protocol.FILE_MTIME)
        if raw_mtime is None or raw_mtime == "":
            mtime = int(time.time())
        else:
            if not _DIGITS.match(raw_mtime):
                raise _Refusal(400, "FileModifiedtime must be whole UNIX seconds")
            mtime = int(raw_mtime)
            if mtime > protocol.MAX_MTIME_SECONDS:
                raise _Refusal(400, "FileModifiedtime must be in seconds, not milliseconds")
        raw_guid = _header(request, protocol.EXTERNAL_GUID)
        guid: str | None = None
        if raw_guid:
            try:
                guid = uuid.UUID(raw_guid.strip("{} ")).hex
            except ValueError:
                raise _Refusal(400, "ExternalFileGUID is not a 128-bit GUID") from None
        return name, parent, size, mtime, guid

    @staticmethod
    def _hash_headers(request: web.Request) -> tuple[str | None, str | None]:
        block = _header(request, protocol.BLOCK_LEVEL_HASH) or _header(
            request, protocol.BLOCK_LEVEL_HASH_ALIAS
        )
        full = _header(request, protocol.FULL_FILE_HASH)
        return (block or None), (full or None)

    async def _chunk(
        self,
        request: web.Request,
        fmt: protocol.Format,
        target: Target,
        request_id: str,
        fault: str | None,
    ) -> web.Response:
        root = protocol.UPLOAD_RESP
        self._counters.chunks += 1
        eof = _is_eof(_header(request, protocol.FILE_EOF))
        session = await self.store.find(request_id)
        if session is None or session.target != target.key:
            self._record("chunk", target.key, "", request_id, 0, 0, 404, eof, fault)
            return self._error(
                fmt,
                root,
                404,
                f"upload session {request_id} not found (unknown, completed, expired or restarted)",
            )
        before = session.offset

        def done(status: int, applied: int = 0) -> None:
            self._record(
                "chunk", target.key, session.path, request_id, before, applied, status, eof, fault
            )

        if session.busy:
            self._counters.conflicts += 1
            done(409)
            return self._error(
                fmt,
                root,
                409,
                "another chunk of this session is still being received",
                requestId=request_id,
                chunkOffset=session.offset,
            )
        remaining = session.size - session.offset
        length = request.content_length
        block_hash, full_hash = self._hash_headers(request)
        refusal: str | None = None
        if length is not None and length > remaining:
            refusal = "the body would take the file past its FileSize"
        elif eof and length is not None and length != remaining:
            refusal = "FileEOF is 1 but the total differs from FileSize"
        elif eof and session.verify_block and block_hash is None:
            refusal = "BlockLevelHash is required on the last chunk"
        if refusal is not None:
            done(400)
            return self._error(fmt, root, 400, refusal)
        session.busy = True
        session.idle.clear()
        try:
            try:
                applied, digest = await self.store.write_body(
                    session,
                    request.content.readany,
                    limit=remaining,
                    max_bytes=self.config.max_chunk_bytes,
                    want_digest=session.verify_block,
                )
                if eof and applied != remaining:
                    await self.store.rollback(session)
                    raise StoreError(400, "FileEOF is 1 but the total differs from FileSize")
                await self.store.commit(session, applied, digest, persist=not eof)
            except (StoreError, BodyIncomplete) as exc:
                status = exc.status if isinstance(exc, StoreError) else 400
                message = exc.message if isinstance(exc, StoreError) else "body cut short"
                done(status)
                return self._error(fmt, root, status, message)
            self._counters.bytes_received += applied
            if not eof:
                done(200, applied)
                return self._reply(
                    fmt,
                    root,
                    {"requestId": request_id, "chunkOffset": session.offset, "errorCode": 0},
                )
            return await self._complete(
                fmt,
                session,
                kind="chunk",
                offset_before=before,
                applied=applied,
                block_hash=block_hash,
                full_hash=full_hash,
                registered=True,
                fault=fault,
            )
        finally:
            session.busy = False
            session.idle.set()

    async def _complete(
        self,
        fmt: protocol.Format,
        session: Session,
        *,
        kind: str,
        offset_before: int,
        applied: int,
        block_hash: str | None,
        full_hash: str | None,
        registered: bool,
        fault: str | None,
    ) -> web.Response:
        root = protocol.UPLOAD_RESP

        def done(status: int) -> None:
            self._record(
                kind,
                session.target,
                session.path,
                session.request_id,
                offset_before,
                applied,
                status,
                True,
                fault,
            )

        try:
            completed = await self.store.complete(
                session,
                full_hash=full_hash,
                block_hash=block_hash,
                strict_parents=self.config.strict_parents,
                registered=registered,
            )
        except StoreError as exc:
            if "integrity" in exc.message:
                self._counters.integrity_failures += 1
            done(exc.status)
            return self._error(fmt, root, exc.status, exc.message)
        self._counters.completed_files += 1
        done(200)
        fields: dict[str, str | int] = {
            "requestId": session.request_id,
            "chunkOffset": completed.size,
            "errorCode": 0,
            "fileGUID": completed.guid,
        }
        if completed.integrity_verified:
            fields["fileIntegrityVerified"] = 1
        return self._reply(fmt, root, fields)


@asynccontextmanager
async def running_emulator(config: EmulatorConfig) -> AsyncIterator[Emulator]:
    """An emulator serving on the current event loop; stopped when the block ends."""
    emulator = Emulator(config)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()

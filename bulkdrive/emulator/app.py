"""The emulator's application: its lifecycle, the routes of the Edge Drive API, folders,
properties and listings, and what tests can read (statistics). Authentication lives in
auth.py, upload sessions in uploads.py, request and reply handling in wire.py.

Every route is served under the three prefixes of spec §1, with the fixed words of a path
matched without regard to case; routing is done here rather than by aiohttp's router for that
reason, on aiohttp's low-level server: an Application would only add its router's resolve,
match info and hooks to every request (~9 % of the emulator's CPU per small file,
benchmarks/README.md). Request bodies of uploads are streamed into the store, never read whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web
from aiohttp.hdrs import EXPECT

from bulkdrive import protocol
from bulkdrive.emulator.auth import AuthRoutes
from bulkdrive.emulator.config import EmulatorConfig
from bulkdrive.emulator.faults import FaultInjector
from bulkdrive.emulator.network import Deadlines, Network
from bulkdrive.emulator.records import StoreTarget
from bulkdrive.emulator.refusals import StoreError
from bulkdrive.emulator.store import Store
from bulkdrive.emulator.uploads import UploadRoutes
from bulkdrive.emulator.wire import (
    DIGITS,
    DROPPED,
    Ctx,
    EmulatorCounters,
    Handler,
    Refusal,
    RequestLog,
    Token,
    UploadRecord,
    answer_expect,
    header,
    query,
    utc_stamp,
)

PREFIXES = (("webconsole", "api"), ("commandcenter", "api"), ("searchsvc", "cvwebservice.svc"))
#: Distinct request paths whose route is remembered (a bound: clients choose the paths).
ROUTE_CACHE_SIZE = 4096


# --- what tests can read ------------------------------------------------------------------


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
    receiving: int = 0  # sessions receiving a request's body right now


# --- the application ----------------------------------------------------------------------


class Emulator(AuthRoutes, UploadRoutes):
    """A running emulator: its settings, its URL and what it has seen."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        root = Path(config.root).resolve()
        self.root = root
        self.shares = {s.share_id: s for s in config.shares}
        self.users = {u.name: u for u in config.users}
        targets = [
            StoreTarget(s.share_id, root / s.share_id, f"share {s.share_id}") for s in config.shares
        ]
        targets += [
            StoreTarget(f"drive:{u.name}", root / "drive" / u.name, f"the drive of {u.name}")
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
        self._fault_delays = Deadlines(config.fault_delay_seconds)
        self.fault_delay = self._fault_delays.wait
        self.network = Network(config.network, self._refuse)
        self._network_on = not config.network.is_direct
        self._handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]] = self._dispatch
        self.upload_log: deque[UploadRecord] = deque(maxlen=100_000)
        self.port = 0
        self.base_url = ""
        self._counters = EmulatorCounters()
        self._tokens: dict[str, Token] = {}
        self._token_digests: dict[str, str] = {}
        self._runner: web.ServerRunner | None = None
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
                self._upload,
            ),
            (("drive", "file", "action", "upload"), frozenset({"POST"}), self._upload),
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
            receiving=self.store.receiving_sessions,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.network.start(loop)
        self._fault_delays.start(loop)
        await self.store.open()
        now = time.time()
        for stored in self.store.tokens:
            self._tokens[stored.digest] = Token(
                stored.user, stored.device_id, stored.idle_seconds, now
            )
        if self.config.request_log is not None:
            self.request_log = RequestLog(Path(self.config.request_log))
            self._handler = self._logged_dispatch
        server = web.Server(self._handle, access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=2.0)
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

    # -- routing

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every request: its Expect header answered first (as aiohttp's router did), then
        the network model (when there is one) around the dispatch."""
        if request.headers.get(EXPECT):
            await answer_expect(request)
        if self._network_on:
            return await self.network.middleware(request, self._handler)
        return await self._handler(request)

    def _refuse(self, request: web.BaseRequest) -> web.Response:
        """The 503 of `--max-active`, logged as every answered request is (the network
        model answers it before any dispatch): a busy server's log must show its refusals."""
        response = self._busy(request)
        self._log_request(request, time.time(), response.status, 0.0)
        return response

    def _log_request(
        self, request: web.BaseRequest, arrived: float, status: int, duration: float
    ) -> None:
        """One line of `--log-requests` (when it is on) for an answered request."""
        if self.request_log is None:
            return
        entry: dict[str, object] = {
            "time": utc_stamp(arrived),
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "status": status,
            "bytes": request.content.total_bytes,
            "duration": round(duration, 6),
        }
        if DROPPED in request:
            entry["dropped"] = request[DROPPED]
        self.request_log.write(entry)

    async def _logged_dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        arrived = time.time()
        started = time.perf_counter()
        status = 0
        try:
            response = await self._dispatch(request)
            if DROPPED not in request:
                status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self._log_request(request, arrived, status, time.perf_counter() - started)

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        self._counters.requests += 1
        fmt = protocol.negotiate(header(request, "Accept"), self.config.json_dialect)
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
        return await handler(request, Ctx(fmt, share_id))

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

    async def _list_shares(self, request: web.BaseRequest, ctx: Ctx) -> web.StreamResponse:
        if self._user_of(request) is None:
            return self._denied(ctx.fmt)
        wanted = query(request, "shareId")
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

    # -- folders, properties, listing

    async def _create_folder(self, request: web.BaseRequest, ctx: Ctx) -> web.StreamResponse:
        root = protocol.FILE_RESOURCE_RESP
        try:
            target = self._authorized_target(request, ctx, upload=True)
            if not isinstance(target, StoreTarget):  # web.Response would take an ABC check
                return target
            fields = await self._request_fields(request)
            name = fields.get("name", "")
            try:
                parts = protocol.split_remote_path(name)
                parent = protocol.split_remote_path(fields.get("parentPath") or "\\")
            except ValueError as exc:
                raise Refusal(400, f"invalid path: {exc}") from None
            if len(parts) != 1 or parts[0] != name:
                raise Refusal(400, "name must be one folder name, without separators")
            self._check_windows_names((*parent, name))
            resource = await self.store.create_folder(
                target, parent, name, self.config.strict_parents
            )
        except Refusal as exc:
            return self._error(ctx.fmt, root, exc.status, exc.message)
        except StoreError as exc:
            return self._error(ctx.fmt, root, exc.status, exc.message)
        return self._reply(
            ctx.fmt, root, {"errorCode": 0}, status=201, children={"fileResource": [resource]}
        )

    async def _metadata(self, request: web.BaseRequest, ctx: Ctx) -> web.StreamResponse:
        root = protocol.FILE_RESOURCE_RESP
        try:
            target = self._authorized_target(request, ctx, upload=False)
            if not isinstance(target, StoreTarget):  # web.Response would take an ABC check
                return target
            parts = self._path_param(request)
            resource = await self.store.metadata(target, parts)
        except (Refusal, StoreError) as exc:
            status = exc.status
            return self._error(ctx.fmt, root, status, exc.message)
        return self._reply(ctx.fmt, root, {"errorCode": 0}, children={"fileResource": [resource]})

    async def _list(self, request: web.BaseRequest, ctx: Ctx) -> web.StreamResponse:
        root = protocol.FILE_RESOURCE_RESP
        try:
            target = self._authorized_target(request, ctx, upload=False)
            if not isinstance(target, StoreTarget):  # web.Response would take an ABC check
                return target
            parts = self._path_param(request)
            limit = self._paging(request, "limit", 50)
            offset = self._paging(request, "offset", 0)
            total, items = await self.store.list_folder(target, parts, offset, limit)
            self._counters.listings += 1
        except (Refusal, StoreError) as exc:
            return self._error(ctx.fmt, root, exc.status, exc.message)
        return self._reply(
            ctx.fmt, root, {"totalCount": total, "errorCode": 0}, children={"fileResource": items}
        )

    @staticmethod
    def _paging(request: web.BaseRequest, name: str, default: int) -> int:
        raw = header(request, name)
        if raw is None or raw == "":
            return default
        if not DIGITS.match(raw):
            raise Refusal(400, f"the {name} header must be a non-negative integer")
        return int(raw)


@asynccontextmanager
async def running_emulator(config: EmulatorConfig) -> AsyncIterator[Emulator]:
    """An emulator serving on the current event loop; stopped when the block ends."""
    emulator = Emulator(config)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()

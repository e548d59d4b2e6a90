"""The Edge Drive API client: one aiohttp session per run, one typed method per endpoint.

This module is the network boundary: every aiohttp error and every non-success status is
translated here, and only here, into the `bulkdrive.errors` tree. Upload requests are never
retried by this module — whether a chunk may be sent again is the upload's decision (spec §8) —
but the idempotent calls around them (login, metadata, listing, folders, shares) retry
transient failures with the same policy the upload uses.

A 401 renews the token once for all concurrent requests: every request remembers the token
generation it was sent with, and only a request whose generation is still current renews
(RenewLoginToken with the Login's deviceId, or a fresh Login when renewal is refused).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import logging
import ssl
import time
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import anyio
from aiohttp.abc import AbstractStreamWriter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from yarl import URL

from bulkdrive import errors, protocol, server_errors
from bulkdrive.bandwidth import BandwidthBudget
from bulkdrive.breaker import Breaker
from bulkdrive.config import Credentials, RetryPolicy, Secret, TransferConfig
from bulkdrive.protocol import FileResource, LoginReply, Node, ShareInfo, UploadReply

__all__ = ["ClientStatistics", "EdgeDriveClient", "retrying"]

T = TypeVar("T")

#: Requests besides the uploads that may be in flight at once (metadata, folders, renewals).
SPARE_CONNECTIONS = 2
#: The longest wait between two tries of the first login (the whole is bounded by the
#: connect timeout).
FIRST_LOGIN_MAX_WAIT = 2.0
#: Login replies of an Edge Drive server carry one of these (spec §2); a page without any is
#: some other web server.
_LOGIN_FIELDS = ("token", "errorCode", "errorMessage", "errorString", "userName")
#: A 401 after at least this many idle seconds teaches the client the server's idle limit;
#: shorter ones are other causes (a restarted server, a revoked token).
MIN_LEARNED_IDLE = 1.0
#: Renew before a request once the token has been idle this share of the limit learned.
IDLE_RENEWAL_SHARE = 0.5

log = logging.getLogger("bulkdrive.client")

Body = bytes | bytearray | memoryview


# --- the retry policy shared with the upload ------------------------------------------------


class _AttemptsWithoutProgress:
    """Counts the attempts since the work last moved forward, as tenacity's attempt number.

    A large file on a flaky link may meet many faults and still progress after each; the
    policy's `attempts` then bounds the attempts in a row that got nowhere, so the total per
    file stays finite (at most `attempts` per chunk) without failing files for being large.
    """

    def __init__(self, progress: Callable[[], int] | None) -> None:
        self._progress = progress
        self._mark = progress() if progress is not None else 0
        self._base = 0
        # Attempts that failed only because another request had replaced the token: free.
        self._free: set[int] = set()

    def __call__(self, retry_state: RetryCallState) -> RetryCallState:
        number = retry_state.attempt_number
        if self._progress is not None:
            now = self._progress()
            if now > self._mark:
                self._mark = now
                self._base = number - 1
                self._free.clear()
        if _replaced_token(retry_state):
            self._free.add(number)
        counted = copy.copy(retry_state)
        counted.attempt_number = max(1, number - self._base - len(self._free))
        return counted


def _replaced_token(retry_state: RetryCallState) -> bool:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    return isinstance(error, errors.TokenExpired) and error.replaced


class _Stop:
    def __init__(self, policy: RetryPolicy, counted: _AttemptsWithoutProgress) -> None:
        self._stop = stop_after_attempt(max(1, policy.attempts))
        self._counted = counted

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._stop(self._counted(retry_state))


class _Wait:
    """Full-jitter exponential backoff, or the server's Retry-After when that is longer."""

    def __init__(self, policy: RetryPolicy, counted: _AttemptsWithoutProgress) -> None:
        self._jitter = wait_random_exponential(multiplier=policy.initial_wait, max=policy.max_wait)
        self._max_wait = policy.max_wait
        self._counted = counted

    def __call__(self, retry_state: RetryCallState) -> float:
        if _replaced_token(retry_state):
            return 0.0  # the new token is there already
        wait = float(self._jitter(self._counted(retry_state)))
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, errors.OutcomeUnknown) and error.retry_after is not None:
            # A busy server (503, 429) says when to come back; the policy's cap still holds,
            # so that a server asking for hours cannot stall the run.
            wait = max(wait, min(error.retry_after, self._max_wait))
        return wait


def retrying(
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
    progress: Callable[[], int] | None = None,
) -> AsyncRetrying:
    """The tenacity policy for transient failures: only `OutcomeUnknown` is retried.

    `progress`, when given, reports how far the work got (for an upload: the bytes the
    server confirmed); attempts and backoff then count from the last progress.
    When the attempts run out, tenacity raises `RetryError`; callers turn it into
    `RetriesExhausted` with the last error's message (see `exhausted`).
    """
    counted = _AttemptsWithoutProgress(progress)
    return AsyncRetrying(
        retry=retry_if_exception_type(errors.OutcomeUnknown),
        stop=_Stop(policy, counted),
        wait=_Wait(policy, counted),
        sleep=sleep or anyio.sleep,
        before_sleep=before_sleep,
        reraise=False,
    )


def exhausted(failure: RetryError, what: str) -> errors.RetriesExhausted:
    last = failure.last_attempt.exception()
    attempts = failure.last_attempt.attempt_number
    return errors.RetriesExhausted(f"{what}: gave up after {attempts} attempts: {last}")


# --- statistics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientStatistics:
    """What the client did so far; tests and the end-of-run report read it."""

    requests: int = 0
    bytes_sent: int = 0
    logins: int = 0
    renewals: int = 0
    failed_requests: int = 0  # raised an error: transport failure or non-success status


@dataclass(frozen=True)
class _Response:
    status: int
    node: Node
    retry_after: float | None
    generation: int


# --- the client ---------------------------------------------------------------------------


class EdgeDriveClient:
    """The API of one Edge Drive server, for one share (or the user's own drive)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        credentials: Credentials,
        *,
        share_id: str | None,
        config: TransferConfig,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._credentials = credentials
        self.share_id = share_id
        self.config = config
        device = credentials.device_id
        self._device_id = device.reveal() if device is not None else uuid.uuid4().hex
        self._token: Secret | None = credentials.token
        self._owns_token = False  # a token we got from Login/Renew, so ours to log out
        self._generation = 0
        self._auth_lock = anyio.Lock()
        self._token_used_at = time.monotonic()
        self._idle_limit: float | None = None  # seconds of idleness a token was refused after
        self.breaker = Breaker(config.retry.give_up_after)
        # Plain counters: bumped on every request, frozen into ClientStatistics on demand.
        self._requests = self._bytes_sent = self._logins = self._renewals = self._failed = 0
        self.bandwidth = BandwidthBudget(config.bwlimit) if config.bwlimit else None
        timeouts = config.timeouts
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._final_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.final_read
        )
        if share_id is None:
            self._root = "drive"
        else:
            self._root = f"drive/share/{quote(share_id, safe='')}"
        self._upload_url = URL(f"{self._base}/{self._root}/file/action/upload")
        self._initiate_urls: dict[tuple[bool, bool], URL] = {}

    # --- lifetime -----------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        credentials: Credentials,
        *,
        share_id: str | None,
        config: TransferConfig = TransferConfig(),  # noqa: B008 - frozen, never mutated
    ) -> AsyncIterator[EdgeDriveClient]:
        """Log in (or take the ready token), yield the client, log out at the end."""
        if not url.startswith(("http://", "https://")):
            raise errors.ConfigError(f"server URL must start with http:// or https://: {url!r}")
        if credentials.token is None and (not credentials.user or credentials.password is None):
            raise errors.ConfigError("give a user name and a password, or a token")
        connector = aiohttp.TCPConnector(
            limit=config.transfers + SPARE_CONNECTIONS, ssl=_ssl_setting(config)
        )
        async with aiohttp.ClientSession(connector=connector) as session:
            client = cls(session, url, credentials, share_id=share_id, config=config)
            if credentials.token is None:
                await client._first_login()
            try:
                yield client
            finally:
                with anyio.CancelScope(shield=True):
                    await client._logout()

    def handoff(self) -> Credentials:
        """This client's token and deviceId, for other processes of the run (`--cluster`
        workers): they use the token and can renew it, and never see the password."""
        if self._token is None:
            raise errors.LoginFailed("not logged in: no token to hand to the workers")
        return Credentials(
            user=self._credentials.user, token=self._token, device_id=Secret(self._device_id)
        )

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(
            requests=self._requests,
            bytes_sent=self._bytes_sent,
            logins=self._logins,
            renewals=self._renewals,
            failed_requests=self._failed,
        )

    # --- authentication -----------------------------------------------------------------

    async def _first_login(self) -> None:
        # A server that cannot be reached at the start is retried like any passing fault, but
        # for a bounded time (the connect timeout), then called unreachable in one line: a
        # wrong URL should not cost minutes of backoff.
        policy = dataclasses.replace(
            self.config.retry, max_wait=min(FIRST_LOGIN_MAX_WAIT, self.config.retry.max_wait)
        )
        window = self.config.timeouts.connect
        seen: list[BaseException | None] = [None]  # the last error, for the message

        def remember(state: RetryCallState) -> None:
            seen[0] = state.outcome.exception() if state.outcome is not None else None

        try:
            with anyio.fail_after(window):
                async for attempt in retrying(policy, before_sleep=remember):
                    with attempt:
                        await self._login()
        except TimeoutError:
            why = f": {seen[0]}" if seen[0] is not None else ": no answer"
            raise errors.ServerUnreachable(
                f"cannot log in at {self._base} within {window:g} seconds (--connect-timeout){why}"
            ) from None
        except RetryError as failure:
            last = failure.last_attempt.exception()
            raise errors.ServerUnreachable(f"cannot log in at {self._base}: {last}") from None

    async def _login(self) -> None:
        password = self._credentials.password
        if password is None:
            raise errors.LoginFailed("the token was refused and there is no password to log in")
        body = {
            "username": self._credentials.user,
            "password": base64.b64encode(password.reveal().encode("utf-8")).decode("ascii"),
            "deviceId": self._device_id,
        }
        response = await self._send("POST", "Login", what="login", json_body=body, auth=False)
        self._logins += 1
        reply = LoginReply.from_node(response.node)
        if response.status != 200 or reply.token is None:
            if response.status in protocol.TRANSIENT_STATUSES:
                raise self._error(response, what="login")  # counted there
            self._count_failure()
            if not _speaks_edge_drive(response):
                raise errors.NotEdgeDrive(
                    f"{self._base} is not an Edge Drive web-service root: its Login answered "
                    f"HTTP {response.status}: {protocol.short_text(_server_says(response.node))}",
                    status=response.status,
                )
            said = reply.error_message or _server_says(response.node) or "no token in the reply"
            raise errors.LoginFailed(
                f"login as {self._credentials.user!r} refused: {protocol.short_text(said)}",
                status=response.status,
            )
        self._token = Secret(reply.token)
        self._owns_token = True
        self._token_used_at = time.monotonic()

    async def _renew(self) -> bool:
        """RenewLoginToken with the Login's deviceId; False when the server refuses it."""
        if self._token is None:
            return False
        body = {"sessionId": self._token.reveal(), "deviceId": self._device_id}
        response = await self._send(
            "POST", "RenewLoginToken", what="renew token", json_body=body, auth=False
        )
        token = response.node.get("token")
        if response.status != 200 or not token:
            return False
        self._token = Secret(token)
        self._owns_token = True
        self._token_used_at = time.monotonic()
        self._renewals += 1
        return True

    async def _reauthenticate(self, seen_generation: int) -> None:
        """Replace a token the server refused, once for all requests that saw it refused."""
        async with self._auth_lock:
            if self._generation != seen_generation:
                return  # another request renewed it already
            if not await self._renew():
                await self._login()
            self._generation += 1

    async def _logout(self) -> None:
        if not self._owns_token or self._token is None:
            return  # a ready token belongs to the user: logging it out would break their use
        with anyio.move_on_after(self.config.timeouts.connect):
            # The token expires by itself; the run's outcome does not depend on the logout.
            with contextlib.suppress(errors.BulkdriveError):
                await self._send("POST", "Logout", what="logout")
        self._token = None

    # --- uploads (spec §4, §5): never retried here ---------------------------------------

    async def initiate(
        self,
        *,
        name: str,
        folder: str,
        size: int,
        mtime: int,
        body: Body,
        eof: bool,
        verify: bool,
        force_restart: bool = False,
        block_hash: str | None = None,
    ) -> UploadReply:
        """Open an upload session, with the file's first bytes as the body.

        A 409 (an unfinished session exists) is a reply with `error_code` 409 and the existing
        session's requestId and chunkOffset, not an error: the upload resumes from it. A 409
        without a requestId (the session is busy receiving) is SessionBusy.
        """
        try:
            parent = protocol.join_remote_path(protocol.split_remote_path(folder))
        except ValueError as exc:
            raise errors.Rejected(f"invalid remote folder {folder!r}: {exc}") from None
        headers = {
            protocol.FILE_NAME: protocol.encode_name(name),
            protocol.FILE_SIZE: str(size),
            protocol.FILE_MTIME: str(max(0, mtime)),
            protocol.PARENT_FOLDER: protocol.encode_name(parent),
            protocol.FILE_EOF: "1" if eof else "0",
        }
        if block_hash is not None:
            headers[protocol.BLOCK_LEVEL_HASH] = block_hash
        what = f"upload {protocol.remote_child(parent, name)}"
        response = await self._send(
            "POST",
            self._initiate_url(verify=verify, force_restart=force_restart),
            what=what,
            headers=headers,
            data=body,
            final=eof,
            paced=True,
            upload=True,
        )
        if response.status == 409:
            reply = UploadReply.from_node(response.node)
            if not reply.request_id:
                # No session offered: the server is still receiving another request for this
                # file (a definite refusal; nothing of this one was applied).
                raise self._error(response, what=what)
            return dataclasses.replace(reply, error_code=409)
        return self._upload_reply(response, what=what, in_session=False)

    async def send_chunk(
        self, request_id: str, body: Body, *, eof: bool, block_hash: str | None = None
    ) -> UploadReply:
        """Append `body` to the session at the server's current offset (chunks carry none)."""
        headers = {protocol.FILE_EOF: "1" if eof else "0"}
        if block_hash is not None:
            headers[protocol.BLOCK_LEVEL_HASH] = block_hash
        what = f"chunk of session {request_id}"
        response = await self._send(
            "POST",
            URL(
                f"{self._upload_url}?uploadType=chunkedFile&requestId={quote(request_id)}",
                encoded=True,
            ),
            what=what,
            headers=headers,
            data=body,
            final=eof,
            paced=True,
            upload=True,
        )
        return self._upload_reply(response, what=what, in_session=True)

    def _initiate_url(self, *, verify: bool, force_restart: bool) -> URL:
        # Built once per variant: URL building is a visible part of a small file's cost.
        key = (verify, force_restart)
        url = self._initiate_urls.get(key)
        if url is None:
            query = {"uploadType": "chunkedFile"}
            if verify:
                query["verifyBlockLevelFileIntegrity"] = "true"
            if force_restart:
                query["forceRestart"] = "true"
            url = self._initiate_urls[key] = self._upload_url.with_query(query)
        return url

    def _upload_reply(self, response: _Response, *, what: str, in_session: bool) -> UploadReply:
        if response.status != 200:
            raise self._error(response, what=what, in_session=in_session)
        reply = UploadReply.from_node(response.node)
        if reply.error_code != 0:
            self._count_failure()
            raise errors.Rejected(
                f"{what}: error {reply.error_code}: {reply.error_string or 'no message'}"
            )
        return reply

    # --- around the upload (spec §7): idempotent, retried here ----------------------------

    async def metadata(self, path: str) -> FileResource | None:
        """The properties of a remote file or folder; None when nothing is there."""
        what = f"metadata of {path}"

        async def call() -> FileResource | None:
            response = await self._send(
                "GET", f"{self._root}/action/metadata", what=what, params={"path": path}
            )
            if response.status == 404:
                return None
            if response.status != 200:
                raise self._error(response, what=what)
            resource = response.node.first("fileResource")
            return FileResource.from_node(resource if resource is not None else response.node)

        return await self.repeat(call, what)

    async def list_folder(self, path: str, *, page_size: int = 500) -> AsyncIterator[FileResource]:
        """The direct children of a remote folder, paged with the `limit`/`offset` headers."""
        offset = 0
        while True:
            what = f"list {path} from {offset}"

            async def call(offset: int = offset, what: str = what) -> Node:
                response = await self._send(
                    "POST",
                    f"{self._root}/action/list",
                    what=what,
                    params={"path": path},
                    headers={"limit": str(page_size), "offset": str(offset)},
                )
                if response.status != 200:
                    raise self._error(response, what=what)
                return response.node

            node = await self.repeat(call, what)
            page = node.all("fileResource")
            for item in page:
                yield FileResource.from_node(item)
            offset += len(page)
            total = _total_count(node)
            if len(page) < page_size or not page or (total is not None and offset >= total):
                return

    async def create_folder(self, parent: str, name: str) -> bool:
        """True when the folder was created (201), False when it existed already (409)."""
        what = f"create folder {protocol.remote_child(parent, name)}"
        info = ET.Element(protocol.FILE_RESOURCE_INFO, {"name": name, "parentPath": parent})
        body = ET.tostring(info, encoding="utf-8")

        async def call() -> bool:
            response = await self._send(
                "POST",
                f"{self._root}/action/createfolder",
                what=what,
                headers={"Content-Type": "application/xml; charset=utf-8"},
                data=body,
            )
            if response.status in (200, 201):
                return True
            if response.status == 409:
                return False
            raise self._error(response, what=what)

        return await self.repeat(call, what)

    async def shares(self) -> list[ShareInfo]:
        """The shares this user can see (spec §7, `GET drive/share`)."""

        async def call() -> list[ShareInfo]:
            response = await self._send("GET", "drive/share", what="list shares")
            if response.status != 200:
                raise self._error(response, what="list shares")
            return [ShareInfo.from_node(n) for n in _nodes_with(response.node, "syncWebFolderId")]

        return await self.repeat(call, "list shares")

    async def check_share(self) -> None:
        """Raise ShareNotFound or PermissionDenied now if the run could upload nothing: asked
        right after login, so that a wrong --share is the run's first and only words.

        The share's root folder answers 404 when the share does not exist (spec §3); the
        share list says whether this user may only view it. A server that answers neither
        question is not asked further: the uploads will say."""
        if self.share_id is None:
            return
        what = f"share {self.share_id}"

        async def root() -> _Response:
            return await self._send(
                "GET", f"{self._root}/action/metadata", what=what, params={"path": "\\"}
            )

        response = await self.repeat(root, what)
        if response.status == 404:
            error = self._error(response, what=what)
            if isinstance(error, errors.ShareNotFound):
                raise error
        if response.status == 403:
            raise self._error(response, what=what)
        try:
            listed = await self.shares()
        except errors.FileFailed:
            return  # no share list here: nothing more to learn before the uploads
        for share in listed:
            if share.share_id == self.share_id and share.writable is False:
                raise errors.PermissionDenied(
                    f"share {self.share_id} ({share.name}) is view-only for "
                    f"{self._credentials.user or 'this user'}: uploads are not allowed"
                )

    async def repeat(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """Run an idempotent request, repeated through the retry policy on transient errors;
        RetriesExhausted when they outlast it."""
        try:
            async for attempt in retrying(self.config.retry):
                with attempt:
                    return await call()
        except RetryError as failure:
            raise exhausted(failure, what) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    # --- the one place where requests are made and errors translated ----------------------

    async def _send(
        self,
        method: str,
        path: str | URL,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Body | None = None,
        json_body: Mapping[str, Any] | None = None,
        auth: bool = True,
        final: bool = False,
        paced: bool = False,
        upload: bool = False,
    ) -> _Response:
        """One HTTP request. A 401 renews the token before it is raised as TokenExpired.
        Uploads (initiates and chunks) count for the run's breaker: a server that takes no
        writes is failing even when it still answers reads."""
        self.breaker.check()
        request_headers = {"Accept": "application/json"}
        request_headers.update(headers or {})
        sent = len(data) if data is not None else 0
        # --bwlimit paces file data only: a folder, a login or a metadata question never
        # waits behind the chunks queued before it
        if paced and self.bandwidth is not None and sent:
            await self.bandwidth.spend(sent)
        # The token is taken now, after the wait for bandwidth, not before: a token read
        # before a long wait arrives idle, or already replaced by another request's renewal.
        idle = 0.0
        if auth:
            idle = await self._token_in_use()
        generation = self._generation
        if auth and self._token is not None:
            request_headers[protocol.AUTHTOKEN] = self._token.reveal()
        self._requests += 1
        self._bytes_sent += sent
        try:
            async with self._session.request(
                method,
                path if isinstance(path, URL) else f"{self._base}/{path}",
                params=params,
                headers=request_headers,
                data=_payload(data),
                json=json_body,
                timeout=self._final_timeout if final else self._timeout,
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = protocol.retry_after_seconds(resp.headers.get("Retry-After"))
        except TimeoutError:
            self._count_failure()
            raise self._transport_failed(
                errors.RequestTimeout(f"{what}: no answer in time"), upload=upload
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            self._count_failure()
            raise errors.CertificateRejected(f"{what}: {_describe(exc)}") from None
        except (aiohttp.ClientSSLError, aiohttp.InvalidURL) as exc:
            self._count_failure()
            raise errors.ServerUnreachable(f"{what}: {_describe(exc)}") from None
        except aiohttp.ClientConnectorError as exc:
            self._count_failure()
            raise self._transport_failed(
                errors.NetworkError(f"{what}: cannot connect: {_describe(exc)}"), upload=upload
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            self._count_failure()
            raise self._transport_failed(
                errors.NetworkError(f"{what}: {_describe(exc)}"), upload=upload
            ) from None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s → %d (%d bytes sent)", method, path, params or {}, status, sent)
        if upload:
            if status < 500:
                self.breaker.succeeded()
            elif stop := self.breaker.failed(
                errors.ServerBusy(f"{what}: HTTP {status}", status=status)
            ):
                raise stop
        response = _Response(status, protocol.parse_body(raw), retry_after, generation)
        if status == 401 and auth:
            self._count_failure()
            if generation != self._generation:
                # Another request replaced the token while this one was out: not this
                # request's fault, and nothing to renew. Send again with the new token.
                raise errors.TokenExpired(
                    f"{what}: HTTP 401 for a token already replaced", replaced=True
                )
            if idle >= MIN_LEARNED_IDLE:
                # Refused after `idle` seconds without use: the server's idle limit is below.
                self._idle_limit = min(self._idle_limit or idle, idle)
            await self._reauthenticate(generation)
            raise self._reply_error(response, what=what)  # counted once, above
        return response

    def _transport_failed(
        self, error: errors.BulkdriveError, *, upload: bool
    ) -> errors.BulkdriveError:
        """A request that reached no answer: an upload's counts for the breaker, whose error
        replaces it once tripped."""
        return (self.breaker.failed(error) if upload else None) or error

    async def _token_in_use(self) -> float:
        """Renew the token first when it has been idle about as long as a token was once
        refused for idleness (the server's limit is unknown until then); note the use.
        Returns how long the token had been idle."""
        now = time.monotonic()
        idle = now - self._token_used_at
        if self._idle_limit is not None and idle >= IDLE_RENEWAL_SHARE * self._idle_limit:
            await self._reauthenticate(self._generation)
            now = time.monotonic()
            idle = 0.0
        self._token_used_at = now
        return idle

    def _error(
        self, response: _Response, *, what: str, in_session: bool = False
    ) -> errors.BulkdriveError:
        """The error a failed reply stands for, counted in failed_requests."""
        self._count_failure()
        return self._reply_error(response, what=what, in_session=in_session)

    @staticmethod
    def _reply_error(
        response: _Response, *, what: str, in_session: bool = False
    ) -> errors.BulkdriveError:
        return server_errors.error_for(
            response.status,
            response.node,
            what=what,
            in_session=in_session,
            retry_after=response.retry_after,
        )

    def _count_failure(self) -> None:
        self._failed += 1


# --- small readers of replies -----------------------------------------------------------


def _ssl_setting(config: TransferConfig) -> ssl.SSLContext | bool:
    """How server certificates are checked: not at all (--insecure), against the CAs of
    --ca-bundle, or against the system's trust store — the OS's own store on Windows and
    macOS, OpenSSL's default paths elsewhere (truststore), so a company CA installed the
    system's way is trusted without flags."""
    if not config.verify_tls:
        return False
    if config.ca_bundle:
        try:
            return ssl.create_default_context(cafile=config.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise errors.ConfigError(f"cannot read CA bundle {config.ca_bundle!r}: {exc}") from None
    import truststore  # only for runs that check certificates

    return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


#: Bytes of a chunk handed to the transport at a time: what the transport may have to copy
#: when the socket does not take them at once.
_SLICE = 1024 * 1024


class _ChunkPayload(aiohttp.BytesPayload):
    """A chunk as a request body, written from a memoryview in slices, waiting for the socket
    between them. aiohttp's own BytesPayload copies the chunk when it slices it to the
    Content-Length, and the transport copies whatever the socket did not take: up to a whole
    chunk per connection. Here neither copies more than one slice.
    """

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)
        if content_length is not None:
            view = view[:content_length]
        for start in range(0, len(view), _SLICE):
            await writer.write(view[start : start + _SLICE])


def _payload(data: Body | None) -> Body | aiohttp.BytesPayload | None:
    """A chunk as a request body (aiohttp's warning about large byte bodies is about the
    copies that `_ChunkPayload` avoids). A body of one slice goes as it is: aiohttp writes
    it with the headers, and the warning filter costs more than the whole small request."""
    if data is None or (isinstance(data, bytes) and len(data) <= _SLICE):
        return data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return _ChunkPayload(data)


def _speaks_edge_drive(response: _Response) -> bool:
    """Whether a Login reply comes from the Edge Drive API: a structured body with its fields.
    A 404, 405 or 501 means no Login endpoint at this URL, whatever the body."""
    if response.status in (404, 405, 501):
        return False
    node = response.node
    return node.first("errList") is not None or any(node.get(k) is not None for k in _LOGIN_FIELDS)


def _server_says(node: Node) -> str:
    return node.get("errorString") or node.get("errorMessage") or node.text.strip()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _total_count(node: Node) -> int | None:
    for key in ("totalCount", "totalcount", "total", "count"):
        if node.get(key) is not None:
            return node.int(key)
    return None


def _nodes_with(node: Node, key: str) -> list[Node]:
    """Every element below `node` that carries `key`, in document order, whatever nests it."""
    found = [node] if node.get(key) is not None else []
    for items in node.children.values():
        for item in items:
            found.extend(_nodes_with(item, key))
    return found

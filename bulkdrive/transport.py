"""One HTTP request to the Edge Drive server: the network boundary.

Every aiohttp error is translated here, and only here, into the `bulkdrive.errors` tree, and
every non-success reply into the error it stands for (`server_errors`). The run's breaker
hears every upload request's fate here, and `--bwlimit` paces file data here. Tokens are the
caller's business (`bulkdrive.auth`): a request carries the one it is given.
"""

from __future__ import annotations

import logging
import ssl
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from yarl import URL

from bulkdrive import errors, protocol, server_errors
from bulkdrive.bandwidth import BandwidthBudget
from bulkdrive.breaker import Breaker
from bulkdrive.config import TransferConfig
from bulkdrive.protocol import Node

__all__ = ["Body", "Response", "Transport", "open_session", "ssl_setting"]

# The name -vv shows (job.py filters the protocol detail by it).
log = logging.getLogger("bulkdrive.client")

Body = bytes | bytearray | memoryview


class Response(NamedTuple):
    """A reply. A named tuple (one per request of a run: a frozen dataclass cost ~1 µs more)."""

    status: int
    body: bytes
    retry_after: float | None

    @property
    def node(self) -> Node:
        """The body parsed, whatever its format, at each use: an upload's 200 is read
        straight into an UploadReply, the other replies once or twice."""
        return protocol.parse_body(self.body)


#: Headers every request carries, given once to the aiohttp session: aiohttp copies them into
#: each request in C, where the same header in a per-request dict costs a pass of Python over
#: it (one request per small file).
_SESSION_HEADERS = {"Accept": "application/json"}

#: The answers that say the server has too much to do (a refusal to come back later).
PUSHBACK_STATUSES = frozenset({429, 503})


class Transport:
    """Requests over one aiohttp session, with the counters `ClientStatistics` reports."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, config: TransferConfig):
        self._session = session
        self.base = base_url.rstrip("/")
        self.breaker = Breaker(config.retry.give_up_after)
        self.bandwidth = BandwidthBudget(config.bwlimit) if config.bwlimit else None
        timeouts = config.timeouts
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._final_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.final_read
        )
        # Plain counters: bumped on every request, frozen into ClientStatistics on demand.
        self.requests = self.bytes_sent = self.failed = 0
        #: The server's push-back (`PUSHBACK_STATUSES`, and requests with no answer in time),
        #: whatever the request: `--transfers auto` reads it.
        self.pushbacks = 0

    async def pace(self, data: Body | None) -> None:
        """--bwlimit paces file data only: a folder, a login or a metadata question never
        waits behind the chunks queued before it."""
        if self.bandwidth is not None and data:
            await self.bandwidth.spend(len(data))

    async def send(
        self,
        method: str,
        path: str | URL,
        *,
        what: str,
        token: str | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Body | None = None,
        json_body: Mapping[str, Any] | None = None,
        final: bool = False,
        upload: bool = False,
    ) -> Response:
        """One HTTP request; the reply whatever its status, or the error of a request that
        got none. Uploads (initiates and chunks) count for the run's breaker: a server that
        takes no writes is failing even when it still answers reads."""
        self.breaker.check()
        if token is not None:
            headers = (
                {**headers, protocol.AUTHTOKEN: token} if headers else {protocol.AUTHTOKEN: token}
            )
        sent = len(data) if data is not None else 0
        self.requests += 1
        self.bytes_sent += sent
        try:
            # Awaited, not entered: read() takes the whole body and gives the connection
            # back to the pool (or closes it when the read fails), which is all that the
            # context manager's exit would do again, at two more coroutines per request.
            resp = await self._session.request(
                method,
                path if isinstance(path, URL) else f"{self.base}/{path}",
                params=params,
                headers=headers,
                data=_payload(data),
                json=json_body,
                timeout=self._final_timeout if final else self._timeout,
                allow_redirects=False,
            )
            raw = await resp.read()
            status = resp.status
            # Only a refusal asks to come back later (429, 503; or a redirect).
            retry_after = (
                None
                if status < 300
                else protocol.retry_after_seconds(resp.headers.get("Retry-After"))
            )
        except TimeoutError:
            self.failed += 1
            self.pushbacks += 1
            raise self._transport_failed(
                errors.RequestTimeout(f"{what}: no answer in time"), upload=upload
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            self.failed += 1
            raise errors.CertificateRejected(f"{what}: {_describe(exc)}") from None
        except (aiohttp.ClientSSLError, aiohttp.InvalidURL) as exc:
            self.failed += 1
            raise errors.ServerUnreachable(f"{what}: {_describe(exc)}") from None
        except aiohttp.ClientConnectorError as exc:
            self.failed += 1
            raise self._transport_failed(
                errors.NetworkError(f"{what}: cannot connect: {_describe(exc)}"), upload=upload
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            self.failed += 1
            raise self._transport_failed(
                errors.NetworkError(f"{what}: {_describe(exc)}"), upload=upload
            ) from None
        if status in PUSHBACK_STATUSES:
            self.pushbacks += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s → %d (%d bytes sent)", method, path, params or {}, status, sent)
        if upload:
            if status < 500:
                self.breaker.succeeded()
            elif stop := self.breaker.failed(
                errors.ServerBusy(f"{what}: HTTP {status}", status=status)
            ):
                raise stop
        return Response(status, raw, retry_after)

    def _transport_failed(
        self, error: errors.BulkdriveError, *, upload: bool
    ) -> errors.BulkdriveError:
        """A request that reached no answer: an upload's counts for the breaker, whose error
        replaces it once tripped."""
        return (self.breaker.failed(error) if upload else None) or error

    def error(
        self, response: Response, *, what: str, in_session: bool = False
    ) -> errors.BulkdriveError:
        """The error a failed reply stands for, counted in failed_requests."""
        self.failed += 1
        return reply_error(response, what=what, in_session=in_session)


def reply_error(
    response: Response, *, what: str, in_session: bool = False
) -> errors.BulkdriveError:
    """The error a failed reply stands for (not counted)."""
    return server_errors.error_for(
        response.status,
        response.node,
        what=what,
        in_session=in_session,
        retry_after=response.retry_after,
    )


def open_session(config: TransferConfig, *, connections: int) -> aiohttp.ClientSession:
    """The aiohttp session of a client: at most `connections` at once, certificates checked as
    `ssl_setting` says, and the headers every request carries."""
    connector = aiohttp.TCPConnector(limit=connections, ssl=ssl_setting(config))
    return aiohttp.ClientSession(connector=connector, headers=_SESSION_HEADERS)


def ssl_setting(config: TransferConfig) -> ssl.SSLContext | bool:
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
#: The first piece of a chunk: aiohttp writes the request's headers and the body's first piece
#: as one new bytes (joined, on Python before 3.12.9), a copy of that piece. A 1 MiB first
#: slice made it a 1 MiB block per chunk, a fresh mmap in a Dask worker that keeps
#: MALLOC_TRIM_THRESHOLD_: 32 × 128 MiB `--no-verify`, 296 k minor faults against 32 k.
_FIRST = 16 * 1024


class _ChunkPayload(aiohttp.BytesPayload):
    """A chunk as a request body, written from a memoryview in slices, waiting for the socket
    between them. aiohttp's own BytesPayload copies the chunk when it slices it to the
    Content-Length, and the transport copies whatever the socket did not take: up to a whole
    chunk per connection. Here neither copies more than one slice, and the copy that goes
    with the headers no more than `_FIRST` bytes.
    """

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)
        if content_length is not None:
            view = view[:content_length]
        start, end = 0, _FIRST
        while start < len(view):
            await writer.write(view[start:end])
            start, end = end, end + _SLICE


def _payload(data: Body | None) -> aiohttp.BytesPayload | None:
    """A chunk as a request body (aiohttp's warning about large byte bodies is about the
    copies that `_ChunkPayload` avoids). A body of one slice goes as aiohttp's own payload:
    aiohttp writes it with the headers, and the warning filter costs more than the whole
    small request. Made here, not by aiohttp's payload registry, which looks the body's
    type up and passes options that a bytes body ignores (one request per small file)."""
    if data is None:
        return None
    if isinstance(data, bytes) and len(data) <= _SLICE:
        return aiohttp.BytesPayload(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return _ChunkPayload(data)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

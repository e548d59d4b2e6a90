"""The emulator's wire: reading requests (headers, query, small bodies), writing replies and
refusals in the endpoint's format, dropping connections for faults, the request log; and the
base of the route handlers, with the state they share and the checks every route makes
(who is asking, which share or drive)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import re
import socket
import struct
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from bulkdrive import protocol
from bulkdrive.emulator.config import EmulatorConfig, Share, User
from bulkdrive.emulator.faults import FaultInjector
from bulkdrive.emulator.records import StoreTarget
from bulkdrive.emulator.store import Store

DIGITS = re.compile(r"^[0-9]+$")


class UploadRecord(NamedTuple):
    """One upload request as the emulator handled it. A NamedTuple, as immutable as a frozen
    dataclass, made ~4x cheaper: one per upload request (benchmarks/README.md)."""

    kind: str  # "initiate" | "chunk" | "fullFile"
    share: str  # shareId, or "drive:<user>" for a user's own drive
    path: str  # remote path, backslash-separated
    request_id: str
    offset_before: int
    body_bytes: int  # bytes applied to the file by this request
    status: int  # the status answered (or that would have been, for lost-response)
    eof: bool
    fault: str | None = None


@dataclass
class Token:
    user: str
    device_id: str
    idle_seconds: float
    last_used: float


#: Distinct tokens whose digest is remembered (a bound: clients choose what they send).
TOKEN_DIGEST_CACHE_SIZE = 256


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


#: Largest Login / RenewLoginToken / createfolder body read.
SMALL_BODY_LIMIT = 64 * 1024


#: What a Windows file system refuses in a name (--windows-names).
_WINDOWS_CHARACTERS = re.compile(r'[<>:"|?*\x00-\x1f]')


_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"{kind}{digit}" for kind in ("COM", "LPT") for digit in "123456789\u00b9\u00b2\u00b3"]
)


@dataclass
class EmulatorCounters:
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


class Refusal(Exception):
    """An early answer of a handler: status and message, rendered in the endpoint's format."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Ctx(NamedTuple):
    """What routing found out about a request: the reply's format and the shareId."""

    fmt: protocol.Format
    share_id: str | None


Handler = Callable[[web.BaseRequest, Ctx], Awaitable[web.StreamResponse]]


#: protocol.render's JSON is json.dumps(..., ensure_ascii=False); these make the same text.
_JSON = json.JSONEncoder(ensure_ascii=False)


_json_string = json.encoder.encode_basestring


#: protocol.CONTENT_TYPES without their charset, which web.Response adds back (cheaper than
#: a headers mapping of its own for every reply).
_MEDIA_TYPES = {fmt: value.split(";")[0] for fmt, value in protocol.CONTENT_TYPES.items()}


def flat_json(
    fields: protocol.Fields, children: Mapping[str, Sequence[protocol.Fields]] | None = None
) -> bytes:
    """The text protocol.render gives for JSON (json.dumps(..., ensure_ascii=False)), for an
    object of strings, integers and booleans with lists of such objects as children, written
    directly: json.dumps builds an encoder per call, which cost more than the rest of a small
    upload's reply."""
    text = _object_text(fields, children)
    if text is None:
        flat: dict[str, object] = dict(fields)
        for tag, items in (children or {}).items():
            flat[tag] = [dict(item) for item in items]
        return _JSON.encode(flat).encode("utf-8")
    return text.encode("utf-8")


def completed_json(request_id: str, offset: int, guid: str, verified: bool) -> bytes:
    """flat_json of the reply that completes a file (one per stored file), from a template."""
    tail = ', "fileIntegrityVerified": 1}' if verified else "}"
    return (
        f'{{"requestId": {_json_string(request_id)}, "chunkOffset": {int.__repr__(offset)}, '
        f'"errorCode": 0, "fileGUID": {_json_string(guid)}{tail}'
    ).encode()


def _object_text(
    fields: protocol.Fields, children: Mapping[str, Sequence[protocol.Fields]] | None
) -> str | None:
    """flat_json's text; None where it would differ from json.dumps's (then that is used)."""
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
            return None
        parts.append(f"{_json_string(key)}: {text}")
    for tag, items in (children or {}).items():
        if tag in fields:  # render's dict would keep the field's place for the list
            return None
        texts: list[str] = []
        for item in items:
            item_text = _object_text(item, None)
            if item_text is None:
                return None
            texts.append(item_text)
        parts.append(f"{_json_string(tag)}: [{', '.join(texts)}]")
    return "{" + ", ".join(parts) + "}"


async def answer_expect(request: web.BaseRequest) -> None:
    """`Expect: 100-continue` (curl sends it before a large body) answered with 100 Continue
    before the body is read, any other expectation with 417, as aiohttp's router did for an
    Application's routes."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11:
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # Not the answer's bytes: aiohttp counts the response from here on.
        request.writer.output_size = 0
    await request.writer.drain()


#: JSON values that protocol.parse_body makes a field of as `str(value)`.
_PLAIN_SCALARS = frozenset({str, int, float})


def plain_json_fields(body: bytes) -> dict[str, str] | None:
    """The fields protocol.parse_body finds in a non-empty flat JSON object of plain values
    (what clients send to createfolder and Login), without its Node; None for anything
    else, which parse_body then reads."""
    stripped = body.strip()
    if not stripped.startswith(b"{"):
        return None
    try:
        data = json.loads(stripped)
    except ValueError:
        return None
    if type(data) is not dict or not data:
        return None
    if not all(type(value) in _PLAIN_SCALARS for value in data.values()):
        return None
    return {str(key).removeprefix("@"): str(value) for key, value in data.items()}


def header(request: web.BaseRequest, name: str) -> str | None:
    """A header's effective value: of a repeated or comma-joined header, the last (spec §1)."""
    values = request.headers.getall(name, None)
    if values is None:
        return None
    # The part after the last comma of the values joined is the last value's own.
    return values[-1].rsplit(",", 1)[-1].strip()


#: Distinct query strings whose parameters are remembered: most requests repeat a few
#: (`uploadType=chunkedFile`), the chunks' `requestId`s only once each.
QUERY_CACHE_SIZE = 256


_queries: dict[str, Mapping[str, str]] = {}


def query_params(request: web.BaseRequest) -> Mapping[str, str]:
    """Query parameters by lower-cased name; the last value wins."""
    raw = request.rel_url.raw_query_string
    found = _queries.get(raw)
    if found is None:
        found = {key.lower(): value for key, value in request.query.items()}
        if len(_queries) >= QUERY_CACHE_SIZE:
            _queries.clear()
        _queries[raw] = found
    return found


def query(request: web.BaseRequest, name: str) -> str | None:
    """Query parameters: names ignoring case, the last value wins."""
    return query_params(request).get(name.lower())


@functools.lru_cache(maxsize=1024)
def parent_folder(raw: str) -> tuple[tuple[str, ...] | None, str | None]:
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


#: How a fault ended a request without an answer ("reset" or "closed"), for the request log.
DROPPED = web.RequestKey("bulkdrive.dropped", str)


def drop_connection(request: web.BaseRequest, *, reset: bool) -> web.Response:
    """Close the connection without an answer; the returned response is never sent."""
    request[DROPPED] = "reset" if reset else "closed"
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


def utc_stamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Routes:
    """What every group of handlers (auth, uploads, the app's own) shares."""

    # The emulator's state, set by Emulator.__init__ (emulator/app.py).
    config: EmulatorConfig
    root: Path
    shares: dict[str, Share]
    users: dict[str, User]
    store: Store
    faults: FaultInjector
    #: The wait of an injected delay fault (network.Deadlines: one timer for all).
    fault_delay: Callable[[], Awaitable[None]]
    upload_log: deque[UploadRecord]
    _counters: EmulatorCounters
    _tokens: dict[str, Token]
    _token_digests: dict[str, str]

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
        if fmt is protocol.Format.JSON:
            body = flat_json(fields, children)
        else:
            body = protocol.render(fmt, root, fields, children)
        response = web.Response(
            body=body, status=status, content_type=_MEDIA_TYPES[fmt], charset="utf-8"
        )
        if headers:
            response.headers.update(headers)
        return response

    def _error(
        self, fmt: protocol.Format, root: str, status: int, message: str, **extra: str | int
    ) -> web.Response:
        fields: dict[str, str | int] = {**extra, "errorCode": status, "errorString": message}
        return self._reply(fmt, root, fields, status=status)

    def _busy(self, request: web.BaseRequest) -> web.Response:
        fmt = protocol.negotiate(header(request, "Accept"), self.config.json_dialect)
        return self._error(fmt, protocol.GENERIC_RESP, 503, "server busy: too many requests")

    def _denied(self, fmt: protocol.Format) -> web.Response:
        self._counters.unauthorized += 1
        return self._reply(
            fmt,
            protocol.GENERIC_RESP,
            {"errorMessage": "Access denied", "errorCode": 5},
            status=401,
        )

    def _user_of(self, request: web.BaseRequest) -> str | None:
        token = header(request, protocol.AUTHTOKEN)
        if not token:
            return None
        digest = self._token_digests.get(token)
        if digest is None:
            # A client sends the same token with every request: hashed once, not each time.
            # Only in memory, like the requests that carry it; never written anywhere.
            digest = token_digest(token)
            if len(self._token_digests) >= TOKEN_DIGEST_CACHE_SIZE:
                self._token_digests.clear()
            self._token_digests[token] = digest
        entry = self._tokens.get(digest)
        now = time.time()
        if entry is None or now - entry.last_used > entry.idle_seconds:
            return None
        entry.last_used = now
        return entry.user

    async def _small_body(self, request: web.BaseRequest) -> bytes:
        if request.content_length is not None and request.content_length > SMALL_BODY_LIMIT:
            raise Refusal(400, "request body too large")
        parts: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > SMALL_BODY_LIMIT:
                raise Refusal(400, "request body too large")
            parts.append(chunk)
        return b"".join(parts)

    async def _request_fields(self, request: web.BaseRequest) -> dict[str, str]:
        """The fields of an XML or JSON request body (flat, or wrapped in its root name)."""
        body = await self._small_body(request)
        fields = plain_json_fields(body)
        if fields is not None:
            return fields
        node = protocol.parse_body(body)
        if not node.fields and not node.children:
            raise Refusal(400, "the body is not an XML element or a JSON object")
        if not node.fields and len(node.children) == 1:
            (only,) = node.children.values()
            if len(only) == 1:
                node = only[0]
        return dict(node.fields)

    def _share_target(self, share_id: str) -> StoreTarget:
        return self.store.targets[share_id]

    def _resolve_share(self, share_id: str | None, *, upload: bool) -> StoreTarget:
        share = self.shares.get(share_id or "")
        if share is None:
            raise Refusal(404, f"share {share_id} does not exist")
        if upload and share.readonly:
            raise Refusal(403, f"share {share_id} is view-only; uploads are not allowed")
        return self._share_target(share.share_id)

    def _authorized_target(
        self, request: web.BaseRequest, ctx: Ctx, *, upload: bool
    ) -> StoreTarget | web.Response:
        user = self._user_of(request)
        if user is None:
            return self._denied(ctx.fmt)
        if ctx.share_id is None:
            return self.store.targets[f"drive:{user}"]
        return self._resolve_share(ctx.share_id, upload=upload)

    def _path_param(self, request: web.BaseRequest) -> tuple[str, ...]:
        raw = query(request, "path")
        if raw is None:
            raise Refusal(400, "the path parameter is required")
        try:
            return protocol.split_remote_path(raw)
        except ValueError as exc:
            raise Refusal(400, f"invalid path: {exc}") from None

    def _check_windows_names(self, names: tuple[str, ...]) -> None:
        """With --windows-names, refuse what a Windows-backed server's file system would."""
        if not self.config.windows_names:
            return
        for name in names:
            problem = windows_name_problem(name)
            if problem is not None:
                raise Refusal(
                    400, f"the name {name!r} is not allowed on a Windows file system: {problem}"
                )

    def _file_headers(
        self, request: web.BaseRequest
    ) -> tuple[str, tuple[str, ...], int, int, str | None]:
        raw_name = header(request, protocol.FILE_NAME)
        raw_size = header(request, protocol.FILE_SIZE)
        raw_parent = header(request, protocol.PARENT_FOLDER)
        if not raw_name:
            raise Refusal(400, "the FileName header is required")
        if raw_size is None or raw_size == "":
            raise Refusal(400, "the FileSize header is required")
        if raw_parent is None or raw_parent == "":
            raise Refusal(400, "the ParentFolderPath header is required")
        try:
            name = protocol.decode_name(raw_name)
        except ValueError:
            raise Refusal(400, "FileName is not base64 of UTF-8 text") from None
        parent, parent_error = parent_folder(raw_parent)
        if parent is None and parent_error is None:
            raise Refusal(400, "ParentFolderPath is not base64 of UTF-8 text")
        try:
            name_parts = protocol.split_remote_path(name)
        except ValueError as exc:
            raise Refusal(400, f"invalid path: {exc}") from None
        if parent is None:
            raise Refusal(400, f"invalid path: {parent_error}")
        if len(name_parts) != 1 or name_parts[0] != name:
            raise Refusal(400, "FileName must be one file name, without separators")
        self._check_windows_names((*parent, name))
        if not DIGITS.match(raw_size):
            raise Refusal(400, "FileSize must be a non-negative integer")
        size = int(raw_size)
        raw_mtime = header(request, protocol.FILE_MTIME)
        if raw_mtime is None or raw_mtime == "":
            mtime = int(time.time())
        else:
            if not DIGITS.match(raw_mtime):
                raise Refusal(400, "FileModifiedtime must be whole UNIX seconds")
            mtime = int(raw_mtime)
            if mtime > protocol.MAX_MTIME_SECONDS:
                raise Refusal(400, "FileModifiedtime must be in seconds, not milliseconds")
        raw_guid = header(request, protocol.EXTERNAL_GUID)
        guid: str | None = None
        if raw_guid:
            try:
                guid = uuid.UUID(raw_guid.strip("{} ")).hex
            except ValueError:
                raise Refusal(400, "ExternalFileGUID is not a 128-bit GUID") from None
        return name, parent, size, mtime, guid

    @staticmethod
    def _hash_headers(request: web.BaseRequest) -> tuple[str | None, str | None]:
        block = header(request, protocol.BLOCK_LEVEL_HASH) or header(
            request, protocol.BLOCK_LEVEL_HASH_ALIAS
        )
        full = header(request, protocol.FULL_FILE_HASH)
        return (block or None), (full or None)

"""Raw Edge Drive requests for the emulator conformance tests (docs/edge-drive-api.md).

Thin wrappers over aiohttp.ClientSession and bulkdrive.protocol: they build the headers and URLs
the spec describes and hand back the status and the parsed body, without any retry or recovery,
so each test sees exactly what the server answered.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import aiohttp
import anyio

from bulkdrive import protocol

USER = "alice"
PASSWORD = "s3cret-Pa55"
SHARE_ID = "1"
READONLY_SHARE_ID = "2"
PUBLIC_SHARE_ID = "3"

JSON = "application/json"
XML = "application/xml"

#: Commvault's documented sample request: `Tulip.jpg` into `\pictures`.
TULIP_B64 = "VHVsaXAuanBn"
PICTURES_B64 = "XHBpY3R1cmVz"
SAMPLE_MTIME = 1424813723

Headers = Iterable[tuple[str, str]] | Mapping[str, str]


@dataclass(frozen=True)
class Reply:
    """One response: status, raw body and the body parsed whatever its format."""

    status: int
    body: bytes
    content_type: str

    @property
    def node(self) -> protocol.Node:
        return protocol.parse_body(self.body)

    @property
    def upload(self) -> protocol.UploadReply:
        return protocol.UploadReply.from_node(self.node)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def _reply(resp: aiohttp.ClientResponse) -> Reply:
    body = await resp.read()
    return Reply(resp.status, body, resp.headers.get("Content-Type", ""))


async def request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Headers | None = None,
    params: Mapping[str, str] | None = None,
    data: Any = None,
) -> Reply:
    async with http.request(method, url, headers=_headers(headers), params=params, data=data) as r:
        return await _reply(r)


def _headers(headers: Headers | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return list(items)


# --- authentication (§2) --------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


async def post_login(
    http: aiohttp.ClientSession,
    base: str,
    body: Any,
    *,
    accept: str = JSON,
    path: str = "Login",
    content_type: str = "application/json",
) -> Reply:
    return await request(
        http,
        "POST",
        f"{base}/{path}",
        headers={"Accept": accept, "Content-Type": content_type},
        data=body,
    )


def login_json(user: str = USER, password: str = PASSWORD, **extra: str) -> str:
    return json.dumps({"username": user, "password": b64(password), **extra})


async def login(
    http: aiohttp.ClientSession,
    base: str,
    *,
    user: str = USER,
    password: str = PASSWORD,
    device_id: str | None = None,
) -> str:
    """A valid token (`QSDK …`); fails the test when login does not succeed."""
    extra = {"deviceId": device_id} if device_id else {}
    reply = await post_login(http, base, login_json(user, password, **extra))
    assert reply.status == 200, reply.text
    token = reply.node.get("token")
    assert token, reply.text
    return token


async def renew(
    http: aiohttp.ClientSession, base: str, token: str, device_id: str, *, accept: str = JSON
) -> Reply:
    return await request(
        http,
        "POST",
        f"{base}/RenewLoginToken",
        headers={"Accept": accept, "Content-Type": "application/json", "Authtoken": token},
        data=json.dumps({"sessionId": token, "deviceId": device_id}),
    )


async def logout(http: aiohttp.ClientSession, base: str, token: str | None) -> Reply:
    headers = {"Authtoken": token} if token is not None else {}
    return await request(http, "POST", f"{base}/Logout", headers=headers)


# --- uploads (§3–§6) ------------------------------------------------------------------------


def upload_path(target: str = "share", share_id: str = SHARE_ID) -> str:
    """The path under <webservice> of an upload target (spec §3)."""
    if target == "share":
        return f"drive/share/{share_id}/file/action/upload"
    if target == "drive":
        return "drive/file/action/upload"
    if target == "contentstore-public":
        return f"contentstore/publicshare/{share_id}/file/action/upload"
    if target == "drive-public":
        return f"drive/publicshare/{share_id}/file/action/upload"
    raise ValueError(target)


def upload_params(
    *,
    upload_type: str = "chunkedFile",
    request_id: str | None = None,
    force_restart: str | None = None,
    verify_block: bool = False,
) -> dict[str, str]:
    params = {"uploadType": upload_type}
    if request_id is not None:
        params["requestId"] = request_id
    if force_restart is not None:
        params["forceRestart"] = force_restart
    if verify_block:
        params["verifyBlockLevelFileIntegrity"] = "true"
    return params


def file_headers(
    name: str,
    size: int,
    parent: str = "\\",
    *,
    token: str | None = None,
    accept: str = JSON,
    eof: bool | None = None,
    mtime: int | None = SAMPLE_MTIME,
) -> list[tuple[str, str]]:
    """The headers of an initiate (or fullFile) request, names and paths base64-encoded."""
    headers = [
        ("Accept", accept),
        (protocol.FILE_NAME, protocol.encode_name(name)),
        (protocol.FILE_SIZE, str(size)),
        (protocol.PARENT_FOLDER, protocol.encode_name(parent)),
    ]
    if token is not None:
        headers.append((protocol.AUTHTOKEN, token))
    if mtime is not None:
        headers.append((protocol.FILE_MTIME, str(mtime)))
    if eof is not None:
        headers.append((protocol.FILE_EOF, "1" if eof else "0"))
    return headers


async def post_upload(
    http: aiohttp.ClientSession,
    base: str,
    headers: Headers,
    body: Any = b"",
    *,
    share_id: str = SHARE_ID,
    target: str = "share",
    **params: Any,
) -> Reply:
    return await request(
        http,
        "POST",
        f"{base}/{upload_path(target, share_id)}",
        headers=headers,
        params=upload_params(**params),
        data=body,
    )


async def initiate(
    http: aiohttp.ClientSession,
    base: str,
    token: str | None,
    name: str,
    size: int,
    body: bytes = b"",
    *,
    parent: str = "\\",
    eof: bool | None = None,
    share_id: str = SHARE_ID,
    accept: str = JSON,
    extra: Headers = (),
    target: str = "share",
    mtime: int | None = SAMPLE_MTIME,
    **params: Any,
) -> Reply:
    """Initiate an upload session (§4), optionally with the first chunk as the body."""
    headers = file_headers(name, size, parent, token=token, accept=accept, eof=eof, mtime=mtime)
    headers += _headers(extra)
    return await post_upload(http, base, headers, body, share_id=share_id, target=target, **params)


async def chunk(
    http: aiohttp.ClientSession,
    base: str,
    token: str | None,
    request_id: str,
    body: Any,
    *,
    eof: bool = False,
    share_id: str = SHARE_ID,
    accept: str = JSON,
    extra: Headers = (),
    target: str = "share",
) -> Reply:
    """One data chunk of a session (§5): no offset, the server appends at its own offset."""
    headers = [("Accept", accept), (protocol.FILE_EOF, "1" if eof else "0")]
    if token is not None:
        headers.append((protocol.AUTHTOKEN, token))
    headers += _headers(extra)
    return await post_upload(
        http, base, headers, body, share_id=share_id, target=target, request_id=request_id
    )


async def upload_whole(
    http: aiohttp.ClientSession,
    base: str,
    token: str | None,
    name: str,
    data: bytes,
    *,
    parent: str = "\\",
    share_id: str = SHARE_ID,
    **kwargs: Any,
) -> Reply:
    """A file sent whole in the initiate call with FileEOF: 1 (§4)."""
    return await initiate(
        http,
        base,
        token,
        name,
        len(data),
        data,
        parent=parent,
        eof=True,
        share_id=share_id,
        **kwargs,
    )


async def upload_chunked(
    http: aiohttp.ClientSession,
    base: str,
    token: str | None,
    name: str,
    data: bytes,
    chunk_size: int,
    *,
    parent: str = "\\",
    share_id: str = SHARE_ID,
    last_extra: Headers = (),
    **params: Any,
) -> Reply:
    """Initiate with the first chunk, then the rest; returns the reply to the last request."""
    first = data[:chunk_size]
    reply = await initiate(
        http,
        base,
        token,
        name,
        len(data),
        first,
        parent=parent,
        eof=len(first) == len(data),
        share_id=share_id,
        extra=last_extra if len(first) == len(data) else (),
        **params,
    )
    assert reply.status == 200, reply.text
    request_id = reply.upload.request_id
    offset = len(first)
    while offset < len(data):
        part = data[offset : offset + chunk_size]
        last = offset + len(part) == len(data)
        reply = await chunk(
            http,
            base,
            token,
            request_id,
            part,
            eof=last,
            share_id=share_id,
            extra=last_extra if last else (),
        )
        if reply.status != 200:
            return reply
        offset += len(part)
    return reply


# --- folders, properties, listing, shares (§7) ------------------------------------------------


async def metadata(
    http: aiohttp.ClientSession,
    base: str,
    token: str | None,
    path: str,
    *,
    share_id: str = SHARE_ID,
    accept: str = JSON,
) -> Reply:
    headers = {"Accept": accept, **({"Authtoken": token} if token else {})}
    return await request(
        http,
        "GET",
        f"{base}/drive/share/{share_id}/action/metadata",
        headers=headers,
        params={"path": path},
    )


async def list_folder(
    http: aiohttp.ClientSession,
    base: str,
    token: str | None,
    path: str,
    *,
    share_id: str = SHARE_ID,
    limit: int | None = None,
    offset: int | None = None,
    accept: str = JSON,
) -> Reply:
    headers = {"Accept": accept, **({"Authtoken": token} if token else {})}
    if limit is not None:
        headers["limit"] = str(limit)
    if offset is not None:
        headers["offset"] = str(offset)
    return await request(
        http,
        "POST",
        f"{base}/drive/share/{share_id}/action/list",
        headers=headers,
        params={"path": path},
    )


async def create_folder(
    http: aiohttp.ClientSession,
    base: str,
    token: str | None,
    name: str,
    parent: str = "\\",
    *,
    share_id: str = SHARE_ID,
    accept: str = JSON,
    as_json: bool = False,
) -> Reply:
    if as_json:
        body = json.dumps({"name": name, "parentPath": parent})
        content_type = "application/json"
    else:
        body = (
            f"<{protocol.FILE_RESOURCE_INFO} name={quoteattr(name)} "
            f"parentPath={quoteattr(parent)}/>"
        )
        content_type = "application/xml"
    headers = {
        "Accept": accept,
        "Content-Type": content_type,
        **({"Authtoken": token} if token else {}),
    }
    return await request(
        http,
        "POST",
        f"{base}/drive/share/{share_id}/action/createfolder",
        headers=headers,
        data=body.encode("utf-8"),
    )


async def list_shares(
    http: aiohttp.ClientSession, base: str, token: str | None, *, accept: str = JSON
) -> Reply:
    headers = {"Accept": accept, **({"Authtoken": token} if token else {})}
    return await request(http, "GET", f"{base}/drive/share", headers=headers)


def find_nodes(node: protocol.Node, key: str) -> list[protocol.Node]:
    """Every element, at any depth, that carries the field `key` (response shapes vary)."""
    found = [node] if key in node.fields else []
    for items in node.children.values():
        for child in items:
            found.extend(find_nodes(child, key))
    return found


def file_resources(node: protocol.Node) -> list[protocol.FileResource]:
    return [protocol.FileResource.from_node(n) for n in find_nodes(node, "name")]


# --- storage on disk --------------------------------------------------------------------------


def stored(root: Path, remote: str, share_id: str = SHARE_ID) -> Path:
    """Where the emulator keeps a completed file: ROOT/<shareId>/<path with / separators>."""
    return root.joinpath(share_id, *protocol.split_remote_path(remote))


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating test bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def block_level_hash(blocks: Iterable[bytes]) -> str:
    """§6: SHA-256 of the joined raw SHA-256 digests of the blocks."""
    return hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)).hexdigest()


# --- raw HTTP over a socket, for bodies that aiohttp would not send --------------------------


async def raw_exchange(port: int, head: bytes, body_part: bytes, *, timeout: float = 10.0) -> bytes:
    """Send a request head and part of a body, then read what the server answers.

    Returns the bytes received until the server closes or `timeout` passes (the test fails on
    timeout through anyio's TimeoutError).
    """
    received = bytearray()
    with anyio.fail_after(timeout):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(head + body_part)
            while b"\r\n\r\n" not in received:
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    return bytes(received)


async def send_truncated(port: int, head: bytes, body_part: bytes) -> None:
    """Send a head and only part of the declared body, then close the connection."""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(head + body_part)
            await anyio.sleep(0.05)


def raw_head(
    path: str, headers: Iterable[tuple[str, str]], content_length: int, *, port: int
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def status_of(raw: bytes) -> int:
    first = raw.split(b"\r\n", 1)[0].split()
    assert len(first) >= 2, raw[:200]
    return int(first[1])


def client() -> aiohttp.ClientSession:
    """A client session for one test: loopback only, no retries, bounded by a timeout."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))


def tree(path: Path) -> dict[str, bytes | None]:
    """Every entry below `path`: file contents, None for directories (to compare before/after)."""
    return {
        str(p.relative_to(path)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(path.rglob("*"))
    }

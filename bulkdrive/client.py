"""The Edge Drive API client: one aiohttp session per run, one typed method per endpoint.

The rooms below it: `transport` makes each request and translates every aiohttp error and
every non-success status into the `bulkdrive.errors` tree; `auth` keeps the token (login,
renewal after a 401, logout); `retry` is the policy for transient failures. Upload requests
are never retried by this module — whether a chunk may be sent again is the upload's decision
(spec §8) — but the idempotent calls around them (metadata, listing, folders, shares) retry
transient failures with the same policy the upload uses.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote

import aiohttp
import anyio
from tenacity import RetryError
from yarl import URL

from bulkdrive import errors, protocol, retry
from bulkdrive.auth import Auth
from bulkdrive.config import Credentials, TransferConfig
from bulkdrive.protocol import FileResource, Node, ShareInfo, UploadReply
from bulkdrive.retry import exhausted
from bulkdrive.transport import Body, Response, Transport, open_session

__all__ = ["ClientStatistics", "EdgeDriveClient", "parent_folder_path"]

T = TypeVar("T")

#: Requests besides the uploads and folder creations that may be in flight at once (metadata,
#: renewals).
SPARE_CONNECTIONS = 2
#: Connections for folder creations, and the most at once (`remote_folders`), at 8 transfers
#: or fewer: sharing the uploads' connections, a burst of folders made files wait for one
#: (measured: ~1 upload waiting at any time on a tree of 50 000 files in 9 000 folders).
FOLDER_CONNECTIONS = 4


def folder_connections(transfers: int) -> int:
    """Folder creations at once beside `transfers` uploads, each on a connection of its own.

    On a fast link a few suffice: a creation takes a fraction of a millisecond and the walk
    finds folders far ahead of their files. Far from the server each takes a round trip, and a
    tree of a few files per folder needs about one creation in flight for every few transfers,
    more where folders nest (a parent is created before its children): 20 ms away, 4 at once
    capped `nettree` (10 000 files in ~1 800 folders) at 128 transfers near 450 files/s."""
    return max(FOLDER_CONNECTIONS, transfers // 2)


@dataclass(frozen=True)
class ClientStatistics:
    """What the client did so far; tests and the end-of-run report read it."""

    requests: int = 0
    bytes_sent: int = 0
    logins: int = 0
    renewals: int = 0
    failed_requests: int = 0  # raised an error: transport failure or non-success status
    #: 503/429 answers and requests with no answer in time, of every kind (an upload's, the
    #: metadata look that follows a refused one, a folder's): the server's push-back.
    pushbacks: int = 0


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
        self.share_id = share_id
        self.config = config
        self._transport = Transport(session, base_url, config)
        self._auth = Auth(self._transport, credentials, config)
        self._send = self._auth.send
        self.breaker = self._transport.breaker
        self.bandwidth = self._transport.bandwidth
        base = self._transport.base
        if share_id is None:
            self._root = "drive"
        else:
            self._root = f"drive/share/{quote(share_id, safe='')}"
        self._upload_url = URL(f"{base}/{self._root}/file/action/upload")
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
        connections = config.transfers + folder_connections(config.transfers) + SPARE_CONNECTIONS
        async with open_session(config, connections=connections) as session:
            client = cls(session, url, credentials, share_id=share_id, config=config)
            if credentials.token is None:
                await client._auth.first_login()
            try:
                yield client
            finally:
                with anyio.CancelScope(shield=True):
                    await client._auth.logout()

    def handoff(self) -> Credentials:
        """This client's token and deviceId, for other processes of the run (`--cluster`
        workers): they use the token and can renew it, and never see the password."""
        return self._auth.handoff()

    def statistics(self) -> ClientStatistics:
        transport, auth = self._transport, self._auth
        return ClientStatistics(
            requests=transport.requests,
            bytes_sent=transport.bytes_sent,
            logins=auth.logins,
            renewals=auth.renewals,
            failed_requests=transport.failed,
            pushbacks=transport.pushbacks,
        )

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
        parent, encoded_parent = _parent_header(folder)
        headers = {
            protocol.FILE_NAME: protocol.encode_name(name),
            protocol.FILE_SIZE: str(size),
            protocol.FILE_MTIME: str(max(0, mtime)),
            protocol.PARENT_FOLDER: encoded_parent,
            protocol.FILE_EOF: "1" if eof else "0",
        }
        if block_hash is not None:
            headers[protocol.BLOCK_LEVEL_HASH] = block_hash
        what = f"upload {parent}\\{name}" if parent != "\\" else f"upload \\{name}"
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
            reply = UploadReply.from_body(response.body)
            if not reply.request_id:
                # No session offered: the server is still receiving another request for this
                # file (a definite refusal; nothing of this one was applied).
                raise self._error(response, what=what)
            return reply._replace(error_code=409)
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

    def _upload_reply(self, response: Response, *, what: str, in_session: bool) -> UploadReply:
        if response.status != 200:
            raise self._error(response, what=what, in_session=in_session)
        reply = UploadReply.from_body(response.body)
        if reply.error_code != 0:
            self._transport.failed += 1
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
            node = response.node
            resource = node.first("fileResource")
            return FileResource.from_node(resource if resource is not None else node)

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
        # JSON, which the API takes as well as XML (spec §7): a tenth of the CPU to build, and
        # less for the server to read, once per folder of the tree.
        body = json.dumps({"name": name, "parentPath": parent}, ensure_ascii=False).encode()

        async def call() -> bool:
            response = await self._send(
                "POST",
                f"{self._root}/action/createfolder",
                what=what,
                headers={"Content-Type": "application/json; charset=utf-8"},
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

        async def root() -> Response:
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
                    f"{self._auth.user}: uploads are not allowed"
                )

    async def repeat(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """Run an idempotent request, repeated through the retry policy on transient errors;
        RetriesExhausted when they outlast it."""
        try:
            return await retry.repeat(call, self.config.retry)
        except RetryError as failure:
            raise exhausted(failure, what) from None

    def _error(
        self, response: Response, *, what: str, in_session: bool = False
    ) -> errors.BulkdriveError:
        return self._transport.error(response, what=what, in_session=in_session)


# --- small readers and writers -----------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # files arrive folder by folder: the same few recur
def parent_folder_path(folder: str) -> str:
    """`folder` (backslash or slash separated) as the server's ParentFolderPath: `\\a\\b`,
    or `\\` for the root. Rejected for a path Edge Drive refuses (`..`, NUL, a drive letter)."""
    try:
        return protocol.join_remote_path(protocol.split_remote_path(folder))
    except ValueError as exc:
        raise errors.Rejected(f"invalid remote folder {folder!r}: {exc}") from None


@functools.lru_cache(maxsize=4096)  # as parent_folder_path: one folder's files come together
def _parent_header(folder: str) -> tuple[str, str]:
    """The ParentFolderPath of `folder`, and its header value (base64 of the UTF-8 path)."""
    parent = parent_folder_path(folder)
    return parent, protocol.encode_name(parent)


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

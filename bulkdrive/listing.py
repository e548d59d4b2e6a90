"""Remote folders, read page by page: what `bulkdrive ls` shows and `bulkdrive check` compares.

`TreeListing` walks a remote folder (and, recursively, the folders below it) with at most
`concurrency` folder listings in flight, and sends every entry into a stream as its page
arrives. Each listing is paged by the client (`limit`/`offset` headers, spec §7), so a folder
of 100 000 entries costs one page in memory at a time; what waits between the listings is the
stream's bounded buffer and the names of the folders still to list.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream

from bulkdrive import errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.protocol import FileResource, remote_child

log = logging.getLogger("bulkdrive.listing")

#: Entries asked for per list request; the server's default page (50) costs a round trip per
#: 50 entries.
PAGE_SIZE = 1000
#: Folder listings in flight at once unless told otherwise.
DEFAULT_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One entry below the listed root. `relative` is "/"-separated, like the walk's paths,
    so that a local and a remote path of the same file are equal strings."""

    relative: str
    resource: FileResource

    @property
    def is_folder(self) -> bool:
        return self.resource.is_directory


@dataclass(frozen=True)
class ListingFailure:
    folder: str  # the remote path
    reason: str


@dataclass(frozen=True)
class ListingStatistics:
    folders_listed: int
    folders_waiting: int
    entries: int
    max_in_flight: int
    failures: int


#: Decides, for a folder below the root, whether to list it too (relative path → yes/no).
Descend = Callable[[str], bool]


class TreeListing:
    """List `root` (and the folders below it when `recursive`) into a stream of entries.

    A folder below the root that vanishes while it is listed is skipped; one that cannot be
    listed for another reason is kept in `failures` (the first `max_failures`, all counted)
    and the rest goes on. A missing root raises FolderNotFound unless `missing_root_ok`;
    errors that stop everything (login, permission, unknown share) are raised as they are.
    """

    def __init__(
        self,
        client: EdgeDriveClient,
        root: str,
        *,
        recursive: bool = True,
        concurrency: int = DEFAULT_CONCURRENCY,
        descend: Descend | None = None,
        missing_root_ok: bool = False,
        page_size: int = PAGE_SIZE,
        max_failures: int = 100,
    ) -> None:
        if concurrency < 1:
            raise errors.ConfigError(f"listings in flight must be at least 1, not {concurrency}")
        self._client = client
        self._root = root
        self._recursive = recursive
        self._concurrency = concurrency
        self._descend = descend
        self._missing_root_ok = missing_root_ok
        self._page_size = page_size
        self._max_failures = max_failures
        self.failures: list[ListingFailure] = []
        self.root_missing = False
        self._failed = 0
        self._listed = 0
        self._waiting = 0
        self._entries = 0
        self._in_flight = 0
        self._max_in_flight = 0

    def statistics(self) -> ListingStatistics:
        return ListingStatistics(
            folders_listed=self._listed,
            folders_waiting=self._waiting,
            entries=self._entries,
            max_in_flight=self._max_in_flight,
            failures=self._failed,
        )

    async def run(self, send: ObjectSendStream[RemoteEntry]) -> None:
        """List everything into `send`, then close it."""
        # Unbounded, but it only holds folder names: the entries go through `send`.
        todo_send, todo_receive = anyio.create_memory_object_stream[str](math.inf)
        self._waiting = 1
        todo_send.send_nowait("")
        async with send, todo_send, todo_receive:
            try:
                async with anyio.create_task_group() as tg:
                    for _ in range(self._concurrency):
                        tg.start_soon(self._worker, todo_receive, todo_send, send)
            except BaseExceptionGroup as group:
                raise errors.alone(group) from None

    async def _worker(
        self,
        todo: ObjectReceiveStream[str],
        more: MemoryObjectSendStream[str],
        send: ObjectSendStream[RemoteEntry],
    ) -> None:
        async for relative in todo:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            try:
                await self._list_one(relative, more, send)
            finally:
                self._in_flight -= 1
                self._waiting -= 1
                self._listed += 1
                if self._waiting == 0:
                    await more.aclose()  # nothing listed, nothing waiting: the tree is done

    async def _list_one(
        self, relative: str, more: MemoryObjectSendStream[str], send: ObjectSendStream[RemoteEntry]
    ) -> None:
        folder = remote_child(self._root, *relative.split("/")) if relative else self._root
        try:
            async for resource in self._client.list_folder(folder, page_size=self._page_size):
                child = f"{relative}/{resource.name}" if relative else resource.name
                self._entries += 1
                await send.send(RemoteEntry(child, resource))
                if (
                    resource.is_directory
                    and self._recursive
                    and (self._descend is None or self._descend(child))
                ):
                    self._waiting += 1
                    more.send_nowait(child)
        except errors.RunFailed:
            raise
        except (errors.FolderNotFound, errors.SessionGone) as exc:
            if relative:
                log.info("%s vanished while the tree was listed", folder)
            elif self._missing_root_ok:
                self.root_missing = True
            else:
                raise errors.FolderNotFound(f"no folder {folder} on the share") from exc
        except errors.BulkdriveError as exc:
            self._failed += 1
            if len(self.failures) < self._max_failures:
                self.failures.append(ListingFailure(folder, str(exc)))
            log.warning("cannot list %s: %s", folder, exc)

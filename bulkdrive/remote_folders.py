"""The run's remote folders, created ahead of their files: a folder waits only for its parent,
a file only for its own folder, at most `transfers` creations at once. Also where a path
relative to SRC lands on the server (names mapped by `--invalid-names escape`)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.abc

from bulkdrive import errors
from bulkdrive.client import EdgeDriveClient, folder_connections
from bulkdrive.names import InvalidNames, check_name, remote_name
from bulkdrive.progress import Reporter
from bulkdrive.protocol import remote_child, split_remote_path
from bulkdrive.work_queue import WorkQueue


def folder_creations(transfers: int) -> int:
    """The most folder creations at once beside `transfers` files in flight: a budget of their
    own, on connections of their own, so that a burst of folders never makes files wait for a
    connection. Near the server a few suffice (on the benchmark's tree 6 of 50 000 files waited
    for their folder, with 2-3 creations at once on average); far from it more transfers need
    more (`client.folder_connections`)."""
    return max(1, min(transfers, folder_connections(transfers)))


#: Folders that could not be created, remembered so that their files fail with the folder's
#: reason without a request each (past this, the oldest are forgotten: the server says).
_FAILED_FOLDERS_KEPT = 16384


def parts(relative: str) -> list[str]:
    """The names along a "/"-separated path relative to SRC ("." is SRC itself)."""
    return [] if relative in ("", ".") else relative.split("/")


def name_of(relative: str) -> str:
    return relative.rpartition("/")[2]


def parent_of(relative: str) -> str:
    """The folder of a path relative to SRC ("" for SRC itself)."""
    return relative.rpartition("/")[0]


#: Remote folder paths kept by RemotePaths (then forgotten all at once: files come grouped by
#: folder, so only the last few folders' files are in flight).
_REMOTE_FOLDERS_KEPT = 64


class RemotePaths:
    """Where paths relative to SRC land under the run's remote folder. Files come grouped by
    folder: the remote paths of the last folders are kept, so that a file costs one name's
    mapping. One folder was not enough on a tree: the files of a batch span ~11 folders and
    the workers, outcomes and reports ask for them in turns."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._folders: dict[str, str] = {}

    def folder_of(self, relative: str) -> str:
        """The remote folder of a file: names mapped by `--invalid-names escape`."""
        parent = relative.rpartition("/")[0]
        folder = self._folders.get(parent)
        if folder is None:
            folders = self._folders
            if len(folders) >= _REMOTE_FOLDERS_KEPT:
                folders.clear()
            # The mapping of a path is that of its names: "/" is left alone and an escape
            # never looks past the end of its name.
            folder = folders[parent] = remote_child(self.root, *parts(remote_name(parent)))
        return folder

    def path_of(self, relative: str) -> str:
        if relative in ("", "."):
            return remote_child(self.root)
        folder = self.folder_of(relative)
        name = remote_name(relative.rpartition("/")[2])
        return ("" if folder == "\\" else folder) + "\\" + name


@dataclass(frozen=True)
class FolderStatistics:
    """What the run's folder creation did, and how often something had to wait for it."""

    created: int
    #: Creations under way now, the most there were at once, and the budget.
    creating: int
    most_at_once: int
    limit: int
    #: Folders found and not yet taken by a creator: now, and the most at once.
    queued: int
    most_queued: int
    #: Files that found their folder still being created (each waited for it).
    files_waited: int


class FolderWaits:
    """The remote folders being created, and those that could not be: a file (or folder) waits
    only for its own parent. Memory: the folders being created (at most the walk's backlog
    ahead) plus a bounded memory of failed ones; a created folder is forgotten at once (a
    folder not known here was created, or its creation failed long ago and the server says).
    A folder's event is made only when something has to wait for it: most are created before
    their first file is handed out."""

    def __init__(self) -> None:
        self._pending: dict[str, anyio.Event | None] = {}
        self._failed: OrderedDict[str, errors.FolderNotCreated] = OrderedDict()

    def add(self, relative: str) -> None:
        self._pending[relative] = None

    def pending(self, relative: str) -> bool:
        return relative in self._pending

    def finish(self, relative: str, error: errors.FolderNotCreated | None) -> None:
        done = self._pending.pop(relative)
        if error is not None:
            self._failed[relative] = error
            if len(self._failed) > _FAILED_FOLDERS_KEPT:
                self._failed.popitem(last=False)
        if done is not None:
            done.set()

    async def wait(self, relative: str) -> errors.FolderNotCreated | None:
        """None once `relative` exists remotely; else why it could not be created."""
        if relative in self._pending:
            done = self._pending[relative]
            if done is None:
                done = self._pending[relative] = anyio.Event()
            await done.wait()
        return self._failed.get(relative)


class RemoteFolders:
    """Creates the folders the walk finds, each as soon as its parent exists.

    The folders wait in a queue, in the walk's order (a parent before its children), for a
    few creator tasks: at most `slots` creations at once, and no task, limiter round or event
    per folder (a folder's bookkeeping cost as much CPU as a small file's upload otherwise).
    """

    def __init__(
        self,
        client: EdgeDriveClient | None,
        paths: RemotePaths,
        *,
        invalid_names: InvalidNames,
        reporter: Reporter,
        transfers: int,
        stop: Callable[[errors.RunFailed], None],
        stopping: Callable[[], bool],
    ) -> None:
        self._client = client
        self._paths = paths
        self._invalid_names = invalid_names
        self._reporter = reporter
        self._stop = stop
        self._stopping = stopping
        self.waits = FolderWaits()
        #: Folder creations meet the same server as the files: `--transfers auto` moves it.
        self.slots = anyio.CapacityLimiter(folder_creations(transfers))
        self.created = 0
        self._task_group: anyio.abc.TaskGroup | None = None
        self._queue: WorkQueue[str] = WorkQueue()
        self._creators = 0
        self._closed = False
        #: Creations under way now, and the most there were at once.
        self.creating = 0
        self.most_at_once = 0
        self._most_queued = 0
        self._files_waited = 0

    def statistics(self) -> FolderStatistics:
        return FolderStatistics(
            created=self.created,
            creating=self.creating,
            most_at_once=self.most_at_once,
            limit=int(self.slots.total_tokens),
            queued=len(self._queue),
            most_queued=self._most_queued,
            files_waited=self._files_waited,
        )

    def follow_transfers(self, transfers: int) -> None:
        """`--transfers auto` set a new limit: as many creations at once as at that setting."""
        self.slots.total_tokens = folder_creations(transfers)

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group
        self.waits.add("")  # the remote folder SRC goes to

    async def ensure_root(self, *, create: bool) -> None:
        """The run's remote folder and its parents (then the files at SRC's top may go)."""
        try:
            if create:
                await self._ensure_remote_root()
        finally:
            self.waits.finish("", None)

    def found(self, relative: str) -> None:
        """The walk found a folder (before any file in it): it is created as soon as a
        creator is free and its parent exists."""
        assert self._task_group is not None and not self._closed
        self.waits.add(relative)
        queue = self._queue
        woken = queue.put(relative)
        if len(queue) > self._most_queued:
            self._most_queued = len(queue)
        if not woken and self._creators < self.slots.total_tokens:
            self._creators += 1
            self._task_group.start_soon(self._creator)

    def close(self) -> None:
        """No more folders (the walk is over): the creators end once the queue is empty."""
        self._closed = True
        self._queue.close()

    async def wait_for_folder_of(self, relative: str) -> errors.FolderNotCreated | None:
        parent = parent_of(relative)
        if self.waits.pending(parent):
            self._files_waited += 1
        return await self.waits.wait(parent)

    async def _creator(self) -> None:
        while (relative := await self._queue.get()) is not None:
            await self._make_folder(relative)

    async def _make_folder(self, relative: str) -> None:
        error: errors.FolderNotCreated | None = None
        try:
            error = await self.waits.wait(parent_of(relative))
            if error is None and not self._stopping():
                try:
                    check_name(relative, self._invalid_names)
                    await self._create_in_slot(relative)
                except errors.BulkdriveError as exc:
                    if isinstance(exc, errors.RunFailed):
                        self._stop(exc)
                    remote = self._paths.path_of(relative)
                    self._reporter.message(
                        f"cannot create folder {remote}: {exc}", level=logging.WARNING
                    )
                    error = errors.FolderNotCreated(
                        f"its remote folder {remote} could not be created: {exc}",
                        folder_hint=exc.hint,
                    )
        finally:
            self.waits.finish(relative, error)

    async def _create_in_slot(self, relative: str) -> None:
        # A free slot is taken without a round through the event loop (`acquire` makes two).
        try:
            self.slots.acquire_nowait()
        except anyio.WouldBlock:
            await self.slots.acquire()
        self.creating += 1
        self.most_at_once = max(self.most_at_once, self.creating)
        try:
            await self._create_folder(relative)
        finally:
            self.creating -= 1
            self.slots.release()

    async def _ensure_remote_root(self) -> None:
        root = split_remote_path(self._paths.root)
        for depth in range(1, len(root) + 1):
            try:
                await self._create_remote(root[: depth - 1], root[depth - 1])
            except errors.RunFailed as exc:
                self._stop(exc)
            except errors.BulkdriveError as exc:
                folder = remote_child("\\", *root[:depth])
                self._reporter.message(f"cannot create folder {folder}: {exc}")

    async def _create_folder(self, relative: str) -> None:
        *parents, name = [remote_name(part) for part in parts(relative)]
        await self._create_remote((*split_remote_path(self._paths.root), *parents), name)

    async def _create_remote(self, parent: tuple[str, ...], name: str) -> None:
        assert self._client is not None
        # The client repeats createfolder on transient errors: 201, or 409 when it exists.
        if await self._client.create_folder(remote_child("\\", *parent), name):
            self.created += 1

"""SHA-256 integrity values of spec §6: block-level (running, resumable) and full-file.

`BlockHasher` holds the running BlockLevelHash of a file's prefix `[0, position)` in constant
memory: the digest of the block being filled and the outer hash over the digests of the
blocks before it. A copy is a few hundred bytes, so the upload keeps one per confirmed offset
and rolls back to it when a chunk's outcome is unknown.

Hashing a chunk costs milliseconds of CPU; `hash_off_loop` moves it to a worker thread
(hashlib releases the GIL for large buffers) and keeps tiny buffers on the loop, where a
thread hop would cost more than the hash.
"""

from __future__ import annotations

import hashlib
from typing import Any

import anyio.to_thread

from bulkdrive.protocol import BLOCK_SIZE

#: What a chunk's bytes may be held in.
Buffer = bytes | bytearray | memoryview

#: Below this many bytes a hash is cheaper than the thread hop that would carry it.
INLINE_HASH_BYTES = 64 * 1024


class BlockHasher:
    """The running block-level hash of a file prefix, fed in order, any piece sizes.

    Its SHA-256 objects are made when first needed: a small file (one short block, most
    files of a tree) never needs the outer hash before `hexdigest`, and a fresh hasher, or a
    copy of one, costs no hash object at all (each costs ~0.3 µs to make or copy, several per
    small file)."""

    __slots__ = ("_block", "_in_block", "_outer", "block_size", "last_block", "position")

    def __init__(self, block_size: int = BLOCK_SIZE) -> None:
        self.block_size = block_size
        self.position = 0
        self._outer: Any = None  # the hash over the whole blocks' digests; None before one
        self._block: Any = None  # the hash of the block being filled; None while it is empty
        self._in_block = 0
        self.last_block = b""  # the digest of the last whole block fed in, for the journal

    def update(self, data: Buffer) -> None:
        """Append `data` to the prefix. Blocking for large buffers: see `hash_off_loop`."""
        if type(data) is bytes and self._in_block + len(data) < self.block_size:
            # Within the block being filled (a small file's only chunk): no view, no loop.
            if data:
                if self._block is None:
                    self._block = hashlib.sha256(data)
                else:
                    self._block.update(data)
                self._in_block += len(data)
                self.position += len(data)
            return
        view = memoryview(data).cast("B")
        start = 0
        while start < len(view):
            take = min(len(view) - start, self.block_size - self._in_block)
            if self._block is None:
                self._block = hashlib.sha256()
            self._block.update(view[start : start + take])
            self._in_block += take
            start += take
            if self._in_block == self.block_size:
                self.last_block = self._block.digest()
                if self._outer is None:
                    self._outer = hashlib.sha256()
                self._outer.update(self.last_block)
                self._block = None
                self._in_block = 0
        self.position += len(view)

    def copy(self) -> BlockHasher:
        twin = BlockHasher.__new__(BlockHasher)
        twin.block_size = self.block_size
        twin.position = self.position
        twin._outer = None if self._outer is None else self._outer.copy()
        twin._block = None if self._block is None else self._block.copy()
        twin._in_block = self._in_block
        twin.last_block = self.last_block
        return twin

    def hexdigest(self) -> str:
        """BlockLevelHash of the prefix as a whole file: its last block may be short, and an
        empty file is one empty block."""
        outer = hashlib.sha256() if self._outer is None else self._outer.copy()
        if self._in_block or self.position == 0:
            outer.update(_EMPTY_BLOCK if self._block is None else self._block.digest())
        return outer.hexdigest()


#: The digest of an empty block (an empty file is one).
_EMPTY_BLOCK = hashlib.sha256().digest()


def extended(hasher: BlockHasher, data: Buffer) -> BlockHasher:
    """A new hasher for the prefix followed by `data`; `hasher` itself is left as it was."""
    twin = hasher.copy()
    twin.update(data)
    return twin


def extended_if_quick(hasher: BlockHasher, data: Buffer) -> BlockHasher | None:
    """`extended(hasher, data)` when `data` is small enough to hash on the event loop (a
    thread hop would cost more than the hash); None when it is not."""
    return extended(hasher, data) if memoryview(data).nbytes <= INLINE_HASH_BYTES else None


async def hash_off_loop(hasher: BlockHasher, data: Buffer) -> BlockHasher:
    """`extended(hasher, data)` without blocking the event loop."""
    quick = extended_if_quick(hasher, data)
    if quick is not None:
        return quick
    return await anyio.to_thread.run_sync(extended, hasher, data)

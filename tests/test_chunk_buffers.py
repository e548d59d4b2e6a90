"""Chunk buffers (`source.ChunkBuffers`): chunks are read into buffers reused from chunk to
chunk and file to file, and a buffer is handed out again only once nothing refers to it."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from test_upload import FAST_RETRY, connected, make_file, stored

from bulkdrive.config import TransferConfig
from bulkdrive.emulator import Emulator
from bulkdrive.emulator.network import NetworkModel
from bulkdrive.source import BufferStatistics, ChunkBuffers, Source
from bulkdrive.upload import upload_file

from conftest import EmulatorFactory

KiB = 1024


def test_a_buffer_is_read_into_again_once_its_chunk_is_gone() -> None:
    buffers = ChunkBuffers(64 * KiB, most=2)
    first = buffers.take(64 * KiB)
    kept = id(first.obj)  # not the buffer itself: holding it would keep it in use
    del first
    again = buffers.take(10 * KiB)
    assert id(again.obj) == kept and len(again) == 10 * KiB
    assert buffers.statistics() == BufferStatistics(made=1, reused=1, spare=0)


def test_a_buffer_something_still_reads_is_not_handed_out() -> None:
    """A slice of a chunk left in a transport's queue keeps its buffer from the next chunk."""
    buffers = ChunkBuffers(64 * KiB, most=2)
    chunk = buffers.take(64 * KiB)
    chunk[:] = b"a" * len(chunk)
    queued = chunk[KiB : 2 * KiB]  # what a transport would still hold of it
    del chunk
    for _ in range(3):
        other = buffers.take(64 * KiB)
        assert other.obj is not queued.obj
        other[:] = b"b" * len(other)
        del other
    assert bytes(queued) == b"a" * KiB
    assert buffers.statistics().made == 2
    del queued
    assert buffers.take(64 * KiB) is not None and buffers.statistics().made == 2


def test_past_the_bound_a_chunk_gets_a_buffer_of_its_own() -> None:
    buffers = ChunkBuffers(64 * KiB, most=2)
    held = [buffers.take(64 * KiB) for _ in range(3)]
    larger = buffers.take(65 * KiB)
    assert len({id(view.obj) for view in [*held, larger]}) == 4
    assert len(larger) == 65 * KiB
    stats = buffers.statistics()
    assert (stats.made, stats.spare) == (2, 2)  # the bound holds: two kept, two of their own


@pytest.mark.anyio
async def test_a_file_no_larger_than_a_chunk_is_read_whole_into_a_buffer(tmp_path: Path) -> None:
    path, data = make_file(tmp_path, "m.bin", 100 * KiB, seed=3)
    buffers = ChunkBuffers(256 * KiB, most=2)
    source = await Source.open(str(path), preload_limit=256 * KiB, buffers=buffers)
    try:
        whole = await source.read(0, len(data))
        assert isinstance(whole, memoryview) and bytes(whole) == data
        assert len(whole.obj) == 256 * KiB  # type: ignore[arg-type]
        other = buffers.take(256 * KiB)  # the source still holds its buffer
        assert other.obj is not whole.obj
        assert bytes(await source.read(0, len(data))) == data
    finally:
        await source.close()


@pytest.mark.anyio
async def test_files_in_flight_share_the_runs_buffers_and_store_their_own_bytes(
    emulator: Emulator, tmp_path: Path
) -> None:
    config = TransferConfig(retry=FAST_RETRY, chunk_size=256 * KiB, verify=False)
    buffers = ChunkBuffers(config.chunk_size, most=2 * 3)
    files = [make_file(tmp_path, f"f{i}.bin", 5 * 256 * KiB + i, seed=i) for i in range(6)]
    async with connected(emulator, config=config) as client:
        limit = anyio.Semaphore(3)  # three files in flight, as --transfers 3

        async def one(path: Path) -> None:
            async with limit:
                await upload_file(client, path, "\\", config=config, buffers=buffers)

        async with anyio.create_task_group() as tg:
            for path, _ in files:
                tg.start_soon(one, path)
    for path, data in files:
        assert stored(emulator, "\\" + path.name).read_bytes() == data
    stats = buffers.statistics()
    chunks = sum(-(-len(data) // config.chunk_size) for _, data in files)  # 36
    assert stats.made <= 6 and stats.spare == 0
    # A buffer for each chunk, and one for each file's open (to read it whole if it fits).
    assert stats.made + stats.reused == chunks + len(files)


@pytest.mark.anyio
async def test_buffers_handed_out_during_sends_never_touch_a_chunk_in_flight(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Every buffer the pool hands out while files are read, hashed and sent is overwritten
    at once: were one of them a chunk still in flight (read ahead, sent, queued), the server
    would store the scribble."""
    emulator = await make_emulator(network=NetworkModel(latency=0.002))
    config = TransferConfig(retry=FAST_RETRY, chunk_size=256 * KiB, verify=False)
    buffers = ChunkBuffers(config.chunk_size, most=2 * 4 + 2)
    rng = random.Random(7)
    # Two files of six chunks and more, two read whole (no larger than a chunk).
    sizes = [6 * 256 * KiB + rng.randrange(KiB) for _ in range(2)]
    sizes += [200 * KiB + rng.randrange(KiB), 256 * KiB]
    files = [make_file(tmp_path, f"s{i}.bin", size, seed=i) for i, size in enumerate(sizes)]
    scribble = b"\xee" * config.chunk_size
    handed = 0
    async with connected(emulator, config=config) as client:
        done = anyio.Event()

        async def scribbler() -> None:
            nonlocal handed
            for _ in range(100_000):  # bounded; ends with the uploads
                if done.is_set():
                    return
                view = buffers.take(config.chunk_size)
                view[:] = scribble
                handed += 1
                del view
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(scribbler)
            async with anyio.create_task_group() as uploads:
                for path, _ in files:
                    uploads.start_soon(
                        lambda p=path: upload_file(client, p, "\\", config=config, buffers=buffers)
                    )
            done.set()
    for path, data in files:
        assert stored(emulator, "\\" + path.name).read_bytes() == data
    assert handed > 12 and buffers.statistics().reused > 12

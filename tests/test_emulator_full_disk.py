"""A full disk on the emulator: 413, nothing half-stored, earlier files intact (§4)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

import edge_raw as er
from conftest import EmulatorFactory

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB file system of its own; mounting one needs root, else the test is skipped."""
    mount = shutil.which("mount")
    disk = tmp_path / "disk"
    disk.mkdir()
    if mount is None:
        pytest.skip("no mount command here")
    made = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


async def test_full_disk_is_413_and_keeps_earlier_files(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, small_disk: Path
) -> None:
    emulator = await make_emulator(root=small_disk)
    base = emulator.base_url
    token = await er.login(http, base)
    first = er.payload(512 * 1024, seed=1)
    assert (await er.upload_whole(http, base, token, "first.bin", first)).status == 200

    # A session that runs out of disk in the middle: the chunk that does not fit is refused
    # with 413 and stores nothing; the session keeps the offset it had.
    big = er.payload(5 * MiB, seed=2)
    opened = await er.initiate(http, base, token, "big.bin", len(big), big[:MiB])
    assert opened.status == 200, opened.text
    refused = None
    offset = MiB
    while offset < len(big):
        reply = await er.chunk(
            http,
            base,
            token,
            opened.upload.request_id,
            big[offset : offset + MiB],
            eof=offset + MiB >= len(big),
        )
        if reply.status != 200:
            refused = reply
            break
        offset += MiB
    assert refused is not None and refused.status == 413, "the disk never filled"
    assert refused.upload.error_code != 0
    again = await er.initiate(http, base, token, "big.bin", len(big), b"")
    assert again.status == 409 and again.upload.chunk_offset == offset

    assert er.stored(small_disk, "\\first.bin").read_bytes() == first
    assert not er.stored(small_disk, "\\big.bin").exists()

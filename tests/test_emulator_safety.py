"""Safety: no request reaches outside ROOT; oversized bodies and quotas get 413 (§1, §4)."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from bulkdrive import protocol
from bulkdrive.emulator import Emulator

import edge_raw as er
from conftest import EmulatorFactory

pytestmark = pytest.mark.anyio


def everything_outside_root(tmp_path: Path) -> dict[str, bytes | None]:
    return {k: v for k, v in er.tree(tmp_path).items() if not k.startswith("server")}


# --- traversal through names and paths ---------------------------------------------------------

BAD_PARENTS = [
    "\\..",
    "\\..\\..\\outside",
    "..\\outside",
    "\\a\\..\\..\\outside",
    "/../outside",
    "a/../../outside",
    "C:\\Windows",
    "c:",
    "D:/outside",
    "\\x\\C:\\y",
    "\\nul\x00byte",
]
BAD_NAMES = ["..", "..\\evil.txt", "../evil.txt", "a\\..\\..\\evil.txt", "C:evil.txt", "e\x00vil"]


@pytest.mark.parametrize("parent", BAD_PARENTS)
async def test_bad_parent_folder_path_is_400(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    token: str,
    tmp_path: Path,
    outside: Path,
    parent: str,
) -> None:
    before = everything_outside_root(tmp_path)
    reply = await er.upload_whole(http, emulator.base_url, token, "evil.txt", b"x", parent=parent)
    assert reply.status == 400, reply.text
    assert everything_outside_root(tmp_path) == before


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_file_name_is_400(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    token: str,
    tmp_path: Path,
    outside: Path,
    name: str,
) -> None:
    before = everything_outside_root(tmp_path)
    reply = await er.upload_whole(http, emulator.base_url, token, name, b"x", parent="\\in")
    assert reply.status == 400, reply.text
    assert everything_outside_root(tmp_path) == before


@pytest.mark.parametrize("upload_type", ["chunkedFile", "fullFile"])
async def test_bad_paths_rejected_for_full_file_too(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    token: str,
    tmp_path: Path,
    outside: Path,
    upload_type: str,
) -> None:
    before = everything_outside_root(tmp_path)
    headers = er.file_headers("evil.txt", 1, "\\..\\..\\outside", token=token)
    reply = await er.post_upload(http, emulator.base_url, headers, b"x", upload_type=upload_type)
    assert reply.status == 400
    assert everything_outside_root(tmp_path) == before


async def test_absolute_paths_stay_inside_the_share(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    token: str,
    tmp_path: Path,
    root: Path,
    outside: Path,
) -> None:
    before = everything_outside_root(tmp_path)
    for parent in (str(outside), "/etc", "\\\\server\\share"):
        reply = await er.upload_whole(
            http, emulator.base_url, token, "abs.txt", b"abs", parent=parent
        )
        assert reply.status in (200, 400), reply.text
        if reply.status == 200:
            assert er.stored(root, parent + "\\abs.txt").read_bytes() == b"abs"
    assert everything_outside_root(tmp_path) == before
    assert not (outside / "abs.txt").exists()


@pytest.mark.parametrize("path", ["\\..", "\\a\\..\\..\\outside", "C:\\x", "\\a\x00b"])
async def test_bad_paths_in_metadata_list_createfolder(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    token: str,
    tmp_path: Path,
    outside: Path,
    path: str,
) -> None:
    base = emulator.base_url
    before = everything_outside_root(tmp_path)
    assert (await er.metadata(http, base, token, path)).status == 400
    assert (await er.list_folder(http, base, token, path)).status == 400
    assert (await er.create_folder(http, base, token, "made", path)).status == 400
    assert (await er.create_folder(http, base, token, "..", "\\")).status == 400
    assert everything_outside_root(tmp_path) == before


@pytest.mark.parametrize("share", ["%2E%2E", "..%2F..%2Foutside", "1%2F..%2F.."])
async def test_share_id_cannot_escape(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    token: str,
    tmp_path: Path,
    outside: Path,
    share: str,
) -> None:
    before = everything_outside_root(tmp_path)
    url = URL(f"{emulator.base_url}/drive/share/{share}/file/action/upload", encoded=True)
    async with http.post(
        url,
        params=er.upload_params(),
        headers=er.file_headers("evil.txt", 1, token=token, eof=True),
        data=b"x",
    ) as resp:
        assert resp.status in (400, 404)
    assert everything_outside_root(tmp_path) == before


# --- symlinks planted inside ROOT -------------------------------------------------------------


@pytest.fixture
async def planted(make_emulator: EmulatorFactory, root: Path, outside: Path) -> Emulator:
    """An emulator whose share 1 holds links out of ROOT: a folder link and a file link."""
    share = root / "1"
    share.mkdir(parents=True)
    os.symlink(outside, share / "evil", target_is_directory=True)
    os.symlink(outside / "secret.txt", share / "link.txt")
    return await make_emulator()


async def test_upload_through_folder_symlink_is_refused(
    planted: Emulator, http: aiohttp.ClientSession, tmp_path: Path, outside: Path
) -> None:
    base = planted.base_url
    token = await er.login(http, base)
    before = everything_outside_root(tmp_path)
    whole = await er.upload_whole(http, base, token, "x.txt", b"escaped", parent="\\evil")
    assert whole.status >= 400, whole.text
    nested = await er.upload_whole(http, base, token, "y.txt", b"esc", parent="\\evil\\deeper")
    assert nested.status >= 400, nested.text
    folder = await er.create_folder(http, base, token, "newdir", "\\evil")
    assert folder.status >= 400, folder.text
    headers = er.file_headers("z.txt", 3, "\\evil", token=token)
    full = await er.post_upload(http, base, headers, b"zzz", upload_type="fullFile")
    assert full.status >= 400, full.text
    assert everything_outside_root(tmp_path) == before


async def test_reads_through_symlinks_are_refused(
    planted: Emulator, http: aiohttp.ClientSession
) -> None:
    base = planted.base_url
    token = await er.login(http, base)
    assert (await er.metadata(http, base, token, "\\evil\\secret.txt")).status >= 400
    listing = await er.list_folder(http, base, token, "\\evil")
    assert listing.status >= 400 or "secret.txt" not in {
        r.name for r in er.file_resources(listing.node)
    }
    meta = await er.metadata(http, base, token, "\\link.txt")
    assert meta.status >= 400 or er.file_resources(meta.node)[0].size != len(b"top secret")


async def test_upload_over_file_symlink_never_writes_its_target(
    planted: Emulator, http: aiohttp.ClientSession, root: Path, outside: Path
) -> None:
    base = planted.base_url
    token = await er.login(http, base)
    whole = await er.upload_whole(http, base, token, "link.txt", b"overwritten!")
    first = await er.initiate(http, base, token, "link.txt", 17, b"chunked ")
    chunked = first
    if first.status == 200:
        chunked = await er.chunk(http, base, token, first.upload.request_id, b"over link", eof=True)
    headers = er.file_headers("link.txt", 4, token=token)
    full = await er.post_upload(http, base, headers, b"full", upload_type="fullFile")
    assert (outside / "secret.txt").read_bytes() == b"top secret"
    link = root / "1" / "link.txt"
    for reply in (whole, chunked, full):
        assert reply.status in (200, 400, 403), reply.text
        if reply.status == 200:
            # Replaced by a plain file inside the share, not written through the link.
            assert not link.is_symlink()


# --- 413: request size and quota ----------------------------------------------------------------


async def test_body_over_max_chunk_bytes_is_413(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, root: Path
) -> None:
    emulator = await make_emulator(max_chunk_bytes=1024)
    base = emulator.base_url
    token = await er.login(http, base)
    big = er.payload(2048)
    reply = await er.upload_whole(http, base, token, "big.bin", big)
    assert reply.status == 413
    assert reply.upload.error_code != 0
    assert not er.stored(root, "\\big.bin").exists()
    first = await er.initiate(http, base, token, "parts.bin", 3072, big[:1024])
    assert first.status == 200, first.text
    rid = first.upload.request_id
    assert (await er.chunk(http, base, token, rid, big)).status == 413
    again = await er.initiate(http, base, token, "parts.bin", 3072)
    assert again.status == 409
    assert again.upload.chunk_offset == 1024
    assert (await er.chunk(http, base, token, rid, big[1024:], eof=False)).status == 200
    assert (await er.chunk(http, base, token, rid, big[:1024], eof=True)).status == 200
    assert er.stored(root, "\\parts.bin").read_bytes() == big + big[:1024]
    headers = er.file_headers("fullbig.bin", len(big), token=token)
    full = await er.post_upload(http, base, headers, big, upload_type="fullFile")
    assert full.status == 413


async def test_413_is_answered_before_the_body_is_read(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, root: Path
) -> None:
    emulator = await make_emulator(max_chunk_bytes=1024)
    token = await er.login(http, emulator.base_url)
    declared = 64 * 1024 * 1024
    headers = [
        *er.file_headers("huge.bin", declared, token=token, eof=True),
    ]
    path = f"{URL(emulator.base_url).path}/{er.upload_path()}?uploadType=chunkedFile"
    head = er.raw_head(path, headers, declared, port=emulator.port)
    # Only 8 KiB of the declared 64 MiB are sent: the answer must come without the rest.
    answer = await er.raw_exchange(emulator.port, head, b"\0" * 8192, timeout=10)
    assert er.status_of(answer) == 413
    assert not er.stored(root, "\\huge.bin").exists()


async def test_quota_413_keeps_earlier_files(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, root: Path
) -> None:
    emulator = await make_emulator(quota=1000)
    base = emulator.base_url
    token = await er.login(http, base)
    a = er.payload(600, seed=1)
    assert (await er.upload_whole(http, base, token, "a.bin", a)).status == 200
    b = er.payload(600, seed=2)
    whole = await er.upload_whole(http, base, token, "b.bin", b)
    assert whole.status == 413, whole.text
    assert whole.upload.error_code != 0
    # The same file in chunks: refused at initiate (declared size) or at the chunk that overflows.
    first = await er.initiate(http, base, token, "c.bin", len(b), b[:300], parent="\\q")
    if first.status == 200:
        last = await er.chunk(http, base, token, first.upload.request_id, b[300:], eof=True)
        assert last.status == 413, last.text
    else:
        assert first.status == 413, first.text
    assert er.stored(root, "\\a.bin").read_bytes() == a
    assert not er.stored(root, "\\b.bin").exists()
    assert not er.stored(root, "\\q\\c.bin").exists()
    # Within the quota still works.
    small = await er.upload_whole(http, base, token, "small.bin", b"s" * 100)
    assert small.status == 200, small.text
    assert er.stored(root, "\\a.bin").read_bytes() == a


async def test_quota_counts_across_files_in_flight(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, root: Path
) -> None:
    emulator = await make_emulator(quota=1000)
    base = emulator.base_url
    token = await er.login(http, base)
    for i in range(3):
        reply = await er.upload_whole(http, base, token, f"q{i}.bin", er.payload(300, seed=i))
        assert reply.status == 200
    reply = await er.upload_whole(http, base, token, "q3.bin", er.payload(300, seed=3))
    assert reply.status == 413
    for i in range(3):
        assert er.stored(root, f"\\q{i}.bin").read_bytes() == er.payload(300, seed=i)


def test_protocol_path_rules_match_the_spec() -> None:
    """The shared path parser the emulator uses: the rules these tests rely on."""
    assert protocol.split_remote_path("/a//b/") == ("a", "b")
    for bad in ("\\..", "C:\\", "a\x00"):
        with pytest.raises(ValueError):
            protocol.split_remote_path(bad)

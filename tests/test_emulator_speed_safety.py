"""The shortcuts of the small-file path keep the rules: whole files written on the event loop
or on the I/O pool, path checks without a realpath per request, GUID rows written in batches."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkdrive import protocol
from bulkdrive.emulator import Emulator
from bulkdrive.emulator.database import Database
from bulkdrive.emulator.disk import (
    _GUID_NAMESPACE,
    INLINE_WRITE_BYTES,
    derived_guid,
)
from bulkdrive.emulator.records import Ids
from bulkdrive.emulator.wire import completed_json, flat_json, plain_json_fields

import edge_raw as er
from conftest import EmulatorFactory

pytestmark = pytest.mark.anyio

#: One size written on the event loop, one that takes the I/O pool (both one request).
SIZES = [4096, INLINE_WRITE_BYTES + 1]


@pytest.mark.parametrize("size", SIZES)
async def test_whole_file_bytes_mtime_and_new_version(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path, size: int
) -> None:
    base = emulator.base_url
    data = er.payload(size, seed=1)
    first = await er.upload_whole(http, base, token, "a.bin", data, parent="\\x\\y")
    assert first.status == 200, first.text
    assert first.upload.chunk_offset == size and first.upload.file_guid
    path = er.stored(root, "\\x\\y\\a.bin")
    assert path.read_bytes() == data
    assert int(path.stat().st_mtime) == er.SAMPLE_MTIME
    newer = er.payload(size, seed=2)
    second = await er.upload_whole(http, base, token, "a.bin", newer, parent="\\x\\y")
    assert second.status == 200, second.text
    assert path.read_bytes() == newer
    assert not list((root / ".bulkdrive" / "partial").iterdir())


@pytest.mark.parametrize("size", SIZES)
async def test_folder_replaced_by_symlink_after_uploads_is_refused(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    token: str,
    root: Path,
    outside: Path,
    size: int,
) -> None:
    base = emulator.base_url
    ok = await er.upload_whole(http, base, token, "one.bin", b"1" * size, parent="\\dir")
    assert ok.status == 200, ok.text
    before = er.tree(outside)
    shutil.rmtree(root / "1" / "dir")
    os.symlink(outside, root / "1" / "dir", target_is_directory=True)
    again = await er.upload_whole(http, base, token, "two.bin", b"2" * size, parent="\\dir")
    assert again.status == 400, again.text
    assert er.tree(outside) == before


@pytest.mark.parametrize("size", SIZES)
async def test_share_folder_replaced_by_symlink_after_uploads_is_refused(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    token: str,
    root: Path,
    outside: Path,
    size: int,
) -> None:
    """The share's own folder was verified once; swapping it must be noticed."""
    base = emulator.base_url
    ok = await er.upload_whole(http, base, token, "one.bin", b"1" * size)
    assert ok.status == 200, ok.text
    (outside / "sub").mkdir()
    before = er.tree(outside)
    shutil.rmtree(root / "1")
    os.symlink(outside, root / "1", target_is_directory=True)
    for parent in ("\\", "\\sub", "\\new"):
        again = await er.upload_whole(http, base, token, "two.bin", b"2" * size, parent=parent)
        assert again.status == 400, again.text
    assert er.tree(outside) == before


async def test_file_in_the_middle_of_the_path_and_folder_at_the_name(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    assert (await er.upload_whole(http, base, token, "f", b"file")).status == 200
    through = await er.upload_whole(http, base, token, "x.bin", b"x", parent="\\f")
    assert through.status == 400, through.text
    (root / "1" / "folder").mkdir()
    over = await er.upload_whole(http, base, token, "folder", b"x")
    assert over.status == 400, over.text
    assert (root / "1" / "folder").is_dir()


@pytest.mark.parametrize("size", SIZES)
async def test_a_new_version_counts_instead_of_the_old_one(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, root: Path, size: int
) -> None:
    """The old version's size, taken from the one look at the name before the write (on the
    event loop) or from a second one right before the rename (the I/O pool), leaves the quota
    when the new version replaces it."""
    emulator = await make_emulator(quota=3 * size)
    base = emulator.base_url
    token = await er.login(http, base)
    assert (await er.upload_whole(http, base, token, "a.bin", b"1" * size)).status == 200
    newer = er.payload(size + 100, seed=3)
    assert (await er.upload_whole(http, base, token, "a.bin", newer)).status == 200
    rest = er.payload(3 * size - len(newer), seed=4)
    filled = await er.upload_whole(http, base, token, "b.bin", rest)
    assert filled.status == 200, filled.text
    over = await er.upload_whole(http, base, token, "c.bin", b"1")
    assert over.status == 413, over.text
    assert (root / "1" / "a.bin").read_bytes() == newer
    assert (root / "1" / "b.bin").read_bytes() == rest
    assert not (root / "1" / "c.bin").exists()


def test_ids_are_version_4_guids_and_long_digit_strings() -> None:
    ids = Ids()
    guids = [ids.guid() for _ in range(2000)]
    assert len(set(guids)) == len(guids)
    for guid in guids:
        as_uuid = uuid.UUID(hex=guid)
        assert as_uuid.version == 4 and as_uuid.variant == uuid.RFC_4122
        # Only the version and variant bits are set: uuid's own setting of them changes nothing.
        assert uuid.UUID(int=as_uuid.int, version=4).hex == guid
    request_ids = {ids.request_id() for _ in range(2000)}
    assert len(request_ids) == 2000
    assert all(rid.isdigit() and len(rid) in (42, 43) for rid in request_ids)


async def test_strict_parents_and_quota_on_small_files(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, root: Path
) -> None:
    emulator = await make_emulator(strict_parents=True, quota=10)
    base = emulator.base_url
    token = await er.login(http, base)
    missing = await er.upload_whole(http, base, token, "a.bin", b"abc", parent="\\nowhere")
    assert missing.status == 404, missing.text
    assert not (root / "1" / "nowhere").exists()
    assert (await er.upload_whole(http, base, token, "a.bin", b"12345678")).status == 200
    over = await er.upload_whole(http, base, token, "b.bin", b"123")
    assert over.status == 413, over.text
    assert not (root / "1" / "b.bin").exists()
    assert (await er.upload_whole(http, base, token, "c.bin", b"12")).status == 200
    assert (root / "1" / "c.bin").read_bytes() == b"12"


async def test_integrity_failure_leaves_no_folder_and_no_file(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    bad = await er.upload_whole(
        http,
        base,
        token,
        "a.bin",
        b"abc",
        parent="\\new",
        verify_block=True,
        extra=[(protocol.BLOCK_LEVEL_HASH, "00" * 32)],
    )
    assert bad.status == 400 and "integrity" in bad.text
    assert not (root / "1" / "new").exists()
    good = await er.upload_whole(
        http,
        base,
        token,
        "a.bin",
        b"abc",
        parent="\\new",
        verify_block=True,
        extra=[(protocol.BLOCK_LEVEL_HASH, er.block_level_hash([b"abc"]))],
    )
    assert good.status == 200 and good.upload.integrity_verified
    assert (root / "1" / "new" / "a.bin").read_bytes() == b"abc"


async def test_guids_of_small_files_survive_a_restart(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    first_root = tmp_path / "server"
    first = await make_emulator(root=first_root)
    token = await er.login(http, first.base_url)
    guids = {}
    for i in range(5):
        reply = await er.upload_whole(http, first.base_url, token, f"f{i}", b"x" * i)
        assert reply.status == 200, reply.text
        guids[f"\\f{i}"] = reply.upload.file_guid
    await first.stop()
    second = await make_emulator(root=first_root)
    token = await er.login(http, second.base_url)
    for path, guid in guids.items():
        meta = await er.metadata(http, second.base_url, token, path)
        assert er.file_resources(meta.node)[0].guid == guid


def test_many_guid_rows_in_one_batch(tmp_path: Path) -> None:
    """More rows than one multi-row INSERT holds, with a path written twice (last wins)."""
    db = Database(tmp_path / "state.sqlite3")
    try:
        rows = [("1", f"d/f{i}", f"{i:032x}") for i in range(1001)]
        db.save_guids(rows)
        db.save_guids([("1", "d/f7", "f" * 32)])
        found = db.file_guids("1", [p for _, p, _ in rows])
        assert len(found) == 1001
        assert found["d/f1000"] == f"{1000:032x}"
        assert found["d/f7"] == "f" * 32
    finally:
        db.conn.close()


_SCALARS = st.one_of(st.text(), st.integers(), st.booleans())
_FIELDS = st.dictionaries(st.text(), _SCALARS, max_size=6)


@given(_FIELDS, st.dictionaries(st.text(), st.lists(_FIELDS, max_size=3), max_size=2))
def test_flat_json_replies_are_the_bytes_protocol_render_makes(
    fields: dict[str, str | int | bool], children: dict[str, list[dict[str, str | int | bool]]]
) -> None:
    expected = protocol.render(protocol.Format.JSON, protocol.UPLOAD_RESP, fields)
    assert flat_json(fields) == expected
    with_children = protocol.render(protocol.Format.JSON, protocol.UPLOAD_RESP, fields, children)
    assert flat_json(fields, children) == with_children


@given(st.text(), st.integers(min_value=0), st.text(), st.booleans())
def test_the_reply_that_completes_a_file_is_the_bytes_protocol_render_makes(
    request_id: str, offset: int, guid: str, verified: bool
) -> None:
    fields: dict[str, str | int] = {
        "requestId": request_id,
        "chunkOffset": offset,
        "errorCode": 0,
        "fileGUID": guid,
    }
    if verified:
        fields["fileIntegrityVerified"] = 1
    expected = protocol.render(protocol.Format.JSON, protocol.UPLOAD_RESP, fields)
    assert completed_json(request_id, offset, guid, verified) == expected


@given(
    st.dictionaries(
        st.text(),
        st.one_of(st.text(), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()),
        max_size=4,
    ),
    st.sampled_from(["", " ", "\n"]),
)
def test_plain_json_request_fields_are_what_parse_body_reads(
    data: dict[str, object], space: str
) -> None:
    body = (space + json.dumps(data) + space).encode()
    fields = plain_json_fields(body)
    if fields is not None:  # else the request is read by parse_body itself
        assert fields == dict(protocol.parse_body(body).fields)
    plain = all(type(v) in (str, int, float) for v in data.values())
    assert (fields is not None) == (bool(data) and plain)


@given(st.text(), st.lists(st.text(), max_size=4))
def test_derived_guids_are_uuid5s_of_the_target_and_path(target: str, parts: list[str]) -> None:
    expected = uuid.uuid5(_GUID_NAMESPACE, f"{target}\x00{'/'.join(parts)}").hex
    assert derived_guid(target, tuple(parts)) == expected

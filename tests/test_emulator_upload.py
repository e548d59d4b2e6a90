"""Spec §3–§5 and §7 (full files): upload targets, sessions, chunks and their status codes."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from bulkdrive import protocol
from bulkdrive.emulator import Emulator, running_emulator

import edge_raw as er
from conftest import EmulatorFactory, emulator_config

pytestmark = pytest.mark.anyio

GUID_RE = re.compile(r"^[0-9a-f]{32}$")


async def offset_of(
    http: aiohttp.ClientSession,
    base: str,
    token: str,
    name: str,
    size: int,
    parent: str = "\\",
) -> int:
    """The server's authoritative offset of the unfinished session for a file (§8 step 2–3)."""
    reply = await er.initiate(http, base, token, name, size, parent=parent)
    assert reply.status == 409, reply.text
    return reply.upload.chunk_offset


# --- the documented sample and the basic session --------------------------------------------


async def test_commvault_sample_request_stores_tulip_in_pictures(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    data = er.payload(5000)
    headers = [
        ("Accept", er.XML),
        ("Authtoken", token),
        ("FileName", er.TULIP_B64),
        ("FileSize", str(len(data))),
        ("FileModifiedtime", str(er.SAMPLE_MTIME)),
        ("ParentFolderPath", er.PICTURES_B64),
        ("FileEOF", "1"),
    ]
    reply = await er.post_upload(http, emulator.base_url, headers, data)
    assert reply.status == 200, reply.text
    node = reply.node
    assert node.name == protocol.UPLOAD_RESP
    assert node.get("requestId", "").isdigit()
    assert node.int("chunkOffset") == len(data)
    assert node.int("errorCode") == 0
    assert GUID_RE.match(node.get("fileGUID") or ""), reply.text
    assert (root / "1" / "pictures" / "Tulip.jpg").read_bytes() == data


async def test_initiate_without_body_starts_at_offset_zero(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.initiate(http, emulator.base_url, token, "later.bin", 100)
    assert reply.status == 200
    up = reply.upload
    assert up.request_id.isdigit()
    assert up.chunk_offset == 0
    assert up.error_code == 0
    assert up.file_guid is None
    assert not er.stored(root, "\\later.bin").exists()


async def test_chunks_append_at_the_server_offset_and_complete(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    data = er.payload(3000, seed=1)
    first = await er.initiate(
        http, base, token, "three.bin", len(data), data[:1000], parent="\\docs", eof=False
    )
    assert first.status == 200
    rid = first.upload.request_id
    assert first.upload.chunk_offset == 1000
    second = await er.chunk(http, base, token, rid, data[1000:2000])
    assert second.status == 200
    assert second.upload.chunk_offset == 2000
    assert second.upload.file_guid is None
    # Unfinished: not visible on disk nor through metadata (§5).
    assert not er.stored(root, "\\docs\\three.bin").exists()
    assert (await er.metadata(http, base, token, "\\docs\\three.bin")).status == 404
    last = await er.chunk(http, base, token, rid, data[2000:], eof=True)
    assert last.status == 200, last.text
    assert last.upload.chunk_offset == len(data)
    assert GUID_RE.match(last.upload.file_guid or "")
    assert er.stored(root, "\\docs\\three.bin").read_bytes() == data


async def test_absent_fileeof_means_not_last(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.initiate(http, emulator.base_url, token, "noeof.bin", 4, b"abcd")
    assert reply.status == 200
    assert reply.upload.chunk_offset == 4
    assert reply.upload.file_guid is None
    assert not er.stored(root, "\\noeof.bin").exists()
    done = await er.chunk(http, emulator.base_url, token, reply.upload.request_id, b"", eof=True)
    assert done.status == 200, done.text
    assert er.stored(root, "\\noeof.bin").read_bytes() == b"abcd"


async def test_chunk_sent_twice_is_stored_twice(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    rid = (await er.initiate(http, base, token, "twice.bin", 9)).upload.request_id
    assert (await er.chunk(http, base, token, rid, b"abc")).upload.chunk_offset == 3
    assert (await er.chunk(http, base, token, rid, b"abc")).upload.chunk_offset == 6
    assert (await er.chunk(http, base, token, rid, b"xyz", eof=True)).status == 200
    assert er.stored(root, "\\twice.bin").read_bytes() == b"abcabcxyz"


async def test_empty_file(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.upload_whole(http, emulator.base_url, token, "empty.txt", b"")
    assert reply.status == 200, reply.text
    assert reply.upload.chunk_offset == 0
    assert GUID_RE.match(reply.upload.file_guid or "")
    assert er.stored(root, "\\empty.txt").read_bytes() == b""


async def test_unicode_names_and_paths(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.upload_whole(
        http, emulator.base_url, token, "Résumé 日本.txt", b"unicode", parent="\\Ünï\\çødé"
    )
    assert reply.status == 200, reply.text
    assert (root / "1" / "Ünï" / "çødé" / "Résumé 日本.txt").read_bytes() == b"unicode"


async def test_external_file_guid_becomes_file_guid(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    guid = uuid.uuid4()
    reply = await er.upload_whole(
        http,
        emulator.base_url,
        token,
        "guid.txt",
        b"g",
        extra=[(protocol.EXTERNAL_GUID, str(guid))],
    )
    assert reply.status == 200
    assert reply.upload.file_guid == guid.hex


async def test_completed_request_id_is_404(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    done = await er.upload_whole(http, emulator.base_url, token, "done.txt", b"done")
    reply = await er.chunk(http, emulator.base_url, token, done.upload.request_id, b"more")
    assert reply.status == 404
    assert er.stored(root, "\\done.txt").read_bytes() == b"done"


async def test_unknown_request_id_is_404(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    reply = await er.chunk(http, emulator.base_url, token, "98765432109876543210", b"x")
    assert reply.status == 404
    assert reply.upload.error_code != 0


# --- 409 on initiate, forceRestart (§4) -------------------------------------------------------


@pytest.mark.parametrize("accept", [er.JSON, er.XML])
async def test_409_returns_existing_session_and_ignores_body(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path, accept: str
) -> None:
    base = emulator.base_url
    data = er.payload(30, seed=2)
    first = await er.initiate(http, base, token, "resume.bin", 30, data[:10], parent="\\r")
    rid = first.upload.request_id
    conflict = await er.initiate(
        http, base, token, "resume.bin", 30, b"JUNKJ", parent="\\r", accept=accept
    )
    assert conflict.status == 409
    up = conflict.upload
    assert up.request_id == rid
    assert up.chunk_offset == 10
    assert conflict.node.get("errorCode") == "409"
    assert up.error_string
    # Resume from the reported offset: the 409's body must not have been applied.
    assert (await er.chunk(http, base, token, rid, data[10:], eof=True)).status == 200
    assert er.stored(root, "\\r\\resume.bin").read_bytes() == data


async def test_409_even_when_initiate_says_eof(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    await er.initiate(http, base, token, "e.bin", 6, b"abc")
    conflict = await er.upload_whole(http, base, token, "e.bin", b"zzzzzz")
    assert conflict.status == 409
    assert conflict.upload.chunk_offset == 3
    assert not er.stored(root, "\\e.bin").exists()


async def test_same_name_in_other_folder_is_another_session(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    base = emulator.base_url
    a = await er.initiate(http, base, token, "same.bin", 4, b"ab", parent="\\a")
    b = await er.initiate(http, base, token, "same.bin", 4, b"ab", parent="\\b")
    assert a.status == b.status == 200
    assert a.upload.request_id != b.upload.request_id


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1"])
async def test_force_restart_discards_old_session(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path, value: str
) -> None:
    base = emulator.base_url
    old = await er.initiate(http, base, token, "fr.bin", 8, b"OLDOLD")
    old_rid = old.upload.request_id
    new = await er.initiate(http, base, token, "fr.bin", 8, b"new", force_restart=value)
    assert new.status == 200, new.text
    assert new.upload.request_id != old_rid
    assert new.upload.chunk_offset == 3
    assert (await er.chunk(http, base, token, old_rid, b"xx", eof=True)).status == 404
    done = await er.chunk(http, base, token, new.upload.request_id, b"bytes", eof=True)
    assert done.status == 200
    assert er.stored(root, "\\fr.bin").read_bytes() == b"newbytes"


@pytest.mark.parametrize("value", ["false", "0", "yes", ""])
async def test_force_restart_other_values_mean_false(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, value: str
) -> None:
    base = emulator.base_url
    old = await er.initiate(http, base, token, "nf.bin", 8, b"OLD")
    reply = await er.initiate(http, base, token, "nf.bin", 8, b"new", force_restart=value)
    assert reply.status == 409
    assert reply.upload.request_id == old.upload.request_id
    assert reply.upload.chunk_offset == 3


# --- 400 rules (§4, §5) -----------------------------------------------------------------------


def _without(headers: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k != name]


def _replace(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [*_without(headers, name), (name, value)]


BAD_INITIATE = {
    "no-filename": lambda h: _without(h, protocol.FILE_NAME),
    "no-filesize": lambda h: _without(h, protocol.FILE_SIZE),
    "no-parent": lambda h: _without(h, protocol.PARENT_FOLDER),
    "filename-not-base64": lambda h: _replace(h, protocol.FILE_NAME, "not base64!"),
    "filename-not-utf8": lambda h: _replace(h, protocol.FILE_NAME, "//79"),
    "parent-not-base64": lambda h: _replace(h, protocol.PARENT_FOLDER, "%%%"),
    "size-negative": lambda h: _replace(h, protocol.FILE_SIZE, "-1"),
    "size-not-integer": lambda h: _replace(h, protocol.FILE_SIZE, "12.5"),
    "size-text": lambda h: _replace(h, protocol.FILE_SIZE, "many"),
    "mtime-milliseconds": lambda h: _replace(h, protocol.FILE_MTIME, "1424813723000"),
    "mtime-text": lambda h: _replace(h, protocol.FILE_MTIME, "yesterday"),
    "parent-dotdot": lambda h: _replace(h, protocol.PARENT_FOLDER, er.b64("\\a\\..\\..")),
    "parent-drive-letter": lambda h: _replace(h, protocol.PARENT_FOLDER, er.b64("C:\\x")),
}


@pytest.mark.parametrize("case", sorted(BAD_INITIATE))
async def test_initiate_bad_headers_are_400(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path, case: str
) -> None:
    headers = er.file_headers("bad.txt", 4, "\\in", token=token, eof=True)
    reply = await er.post_upload(http, emulator.base_url, BAD_INITIATE[case](headers), b"abcd")
    assert reply.status == 400, reply.text
    assert reply.upload.error_code != 0
    assert reply.upload.error_string
    assert not er.stored(root, "\\in\\bad.txt").exists()


async def test_mtime_in_seconds_is_accepted_and_kept(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    base = emulator.base_url
    reply = await er.upload_whole(http, base, token, "t.txt", b"t", mtime=1_700_000_000)
    assert reply.status == 200
    meta = await er.metadata(http, base, token, "\\t.txt")
    resource = er.file_resources(meta.node)[0]
    assert resource.modified_time == 1_700_000_000


async def test_mtime_is_optional(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.upload_whole(http, emulator.base_url, token, "now.txt", b"n", mtime=None)
    assert reply.status == 200
    assert er.stored(root, "\\now.txt").read_bytes() == b"n"


@pytest.mark.parametrize(
    ("mtime", "status"),
    [(protocol.MAX_MTIME_SECONDS + 1, 400), (4_000_000_000, 200), (0, 200)],
    ids=["after-year-3000", "year-2096", "epoch"],
)
async def test_mtime_year_3000_limit(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, mtime: int, status: int
) -> None:
    reply = await er.upload_whole(http, emulator.base_url, token, "y.txt", b"y", mtime=mtime)
    assert reply.status == status, reply.text


async def test_sizes_above_4_gib_are_normal(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    size = 5 * 1024**3 + 7
    reply = await er.initiate(http, emulator.base_url, token, "huge.iso", size, b"start")
    assert reply.status == 200, reply.text
    assert reply.upload.chunk_offset == 5
    assert await offset_of(http, emulator.base_url, token, "huge.iso", size) == 5


async def test_chunk_ignores_file_headers(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    """§5: with requestId present, FileName, FileSize, ParentFolderPath are ignored."""
    base = emulator.base_url
    rid = (await er.initiate(http, base, token, "ign.bin", 6, b"abc")).upload.request_id
    junk = [
        (protocol.FILE_NAME, "!!not base64!!"),
        (protocol.FILE_SIZE, "lots"),
        (protocol.PARENT_FOLDER, er.b64("\\..\\..")),
        (protocol.FILE_MTIME, "99999999999999"),
    ]
    reply = await er.chunk(http, base, token, rid, b"def", eof=True, extra=junk)
    assert reply.status == 200, reply.text
    assert er.stored(root, "\\ign.bin").read_bytes() == b"abcdef"


async def test_unknown_upload_type_is_400(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    headers = er.file_headers("u.txt", 1, token=token, eof=True)
    reply = await er.post_upload(http, emulator.base_url, headers, b"u", upload_type="sliced")
    assert reply.status == 400


async def test_initiate_body_longer_than_filesize_is_400(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    reply = await er.initiate(http, base, token, "long.bin", 3, b"abcde")
    assert reply.status == 400
    # Nothing was kept: a new initiate starts a fresh session.
    again = await er.initiate(http, base, token, "long.bin", 3, b"abc", eof=True)
    assert again.status == 200
    assert er.stored(root, "\\long.bin").read_bytes() == b"abc"


async def test_initiate_eof_with_fewer_bytes_is_400(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.initiate(http, emulator.base_url, token, "short.bin", 10, b"abc", eof=True)
    assert reply.status == 400
    assert not er.stored(root, "\\short.bin").exists()


async def test_chunk_past_filesize_is_400_and_not_applied(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    rid = (await er.initiate(http, base, token, "over.bin", 6, b"abc")).upload.request_id
    reply = await er.chunk(http, base, token, rid, b"defg")
    assert reply.status == 400
    assert await offset_of(http, base, token, "over.bin", 6) == 3
    assert (await er.chunk(http, base, token, rid, b"def", eof=True)).status == 200
    assert er.stored(root, "\\over.bin").read_bytes() == b"abcdef"


async def test_chunk_eof_before_filesize_is_400(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    rid = (await er.initiate(http, base, token, "early.bin", 6, b"abc")).upload.request_id
    reply = await er.chunk(http, base, token, rid, b"de", eof=True)
    assert reply.status == 400
    assert not er.stored(root, "\\early.bin").exists()


# --- targets: shares, drive, public shares (§3) -------------------------------------------------


async def test_view_only_share_is_403(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    for upload_type in ("chunkedFile", "fullFile"):
        headers = er.file_headers("ro.txt", 2, token=token, eof=upload_type == "chunkedFile")
        reply = await er.post_upload(
            http, base, headers, b"ro", share_id=er.READONLY_SHARE_ID, upload_type=upload_type
        )
        assert reply.status == 403, (upload_type, reply.text)
        assert reply.upload.error_code != 0
    assert not er.stored(root, "\\ro.txt", er.READONLY_SHARE_ID).exists()


async def test_unknown_share_is_404(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    reply = await er.upload_whole(http, emulator.base_url, token, "x.txt", b"x", share_id="999")
    assert reply.status == 404
    assert reply.upload.error_code != 0
    assert reply.upload.error_string


@pytest.mark.parametrize("target", ["contentstore-public", "drive-public"])
async def test_public_share_upload_without_token(
    emulator: Emulator, http: aiohttp.ClientSession, root: Path, target: str
) -> None:
    base = emulator.base_url
    data = er.payload(2000, seed=3)
    first = await er.initiate(
        http,
        base,
        None,
        "pub.bin",
        len(data),
        data[:1500],
        share_id=er.PUBLIC_SHARE_ID,
        target=target,
        parent="\\incoming",
    )
    assert first.status == 200, first.text
    done = await er.chunk(
        http,
        base,
        None,
        first.upload.request_id,
        data[1500:],
        eof=True,
        share_id=er.PUBLIC_SHARE_ID,
        target=target,
    )
    assert done.status == 200, done.text
    assert er.stored(root, "\\incoming\\pub.bin", er.PUBLIC_SHARE_ID).read_bytes() == data


@pytest.mark.parametrize("target", ["contentstore-public", "drive-public"])
async def test_public_routes_refuse_private_shares(
    emulator: Emulator, http: aiohttp.ClientSession, root: Path, target: str
) -> None:
    for share in (er.SHARE_ID, er.READONLY_SHARE_ID):
        reply = await er.upload_whole(
            http, emulator.base_url, None, "sneak.txt", b"x", share_id=share, target=target
        )
        assert reply.status in (401, 403, 404), reply.text
        assert not er.stored(root, "\\sneak.txt", share).exists()


async def test_users_own_drive_upload(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    base = emulator.base_url
    data = er.payload(700, seed=4)
    first = await er.initiate(http, base, token, "mine.bin", len(data), data[:400], target="drive")
    assert first.status == 200, first.text
    done = await er.chunk(
        http, base, token, first.upload.request_id, data[400:], eof=True, target="drive"
    )
    assert done.status == 200, done.text
    assert done.upload.chunk_offset == len(data)
    assert GUID_RE.match(done.upload.file_guid or "")
    unauth = await er.upload_whole(http, base, None, "mine2.bin", b"x", target="drive")
    assert unauth.status == 401


# --- full-file uploads, versions, parents (§7) ------------------------------------------------


async def test_full_file_upload(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    data = er.payload(4096, seed=5)
    headers = er.file_headers("full.bin", len(data), "\\ff", token=token)
    reply = await er.post_upload(http, emulator.base_url, headers, data, upload_type="fullFile")
    assert reply.status == 200, reply.text
    assert GUID_RE.match(reply.upload.file_guid or "")
    assert er.stored(root, "\\ff\\full.bin").read_bytes() == data


@pytest.mark.parametrize("declared", [10, 3])
async def test_full_file_length_must_equal_filesize(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path, declared: int
) -> None:
    headers = er.file_headers("fullbad.bin", declared, token=token)
    reply = await er.post_upload(
        http, emulator.base_url, headers, b"abcdef", upload_type="fullFile"
    )
    assert reply.status == 400
    assert not er.stored(root, "\\fullbad.bin").exists()


async def test_full_file_force_restart_discards_chunked_session(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    rid = (await er.initiate(http, base, token, "mix.bin", 6, b"old")).upload.request_id
    headers = er.file_headers("mix.bin", 6, token=token)
    reply = await er.post_upload(
        http, base, headers, b"FULL!!", upload_type="fullFile", force_restart="true"
    )
    assert reply.status == 200, reply.text
    assert er.stored(root, "\\mix.bin").read_bytes() == b"FULL!!"
    assert (await er.chunk(http, base, token, rid, b"end", eof=True)).status == 404


async def test_upload_over_existing_file_stores_new_version(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    assert (await er.upload_whole(http, base, token, "v.txt", b"version one")).status == 200
    again = await er.upload_whole(http, base, token, "v.txt", b"v2")
    assert again.status == 200, again.text
    assert er.stored(root, "\\v.txt").read_bytes() == b"v2"


async def test_missing_parents_are_created(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.upload_whole(
        http, emulator.base_url, token, "deep.txt", b"deep", parent="\\a\\b\\c"
    )
    assert reply.status == 200
    assert (root / "1" / "a" / "b" / "c" / "deep.txt").read_bytes() == b"deep"


async def test_strict_parents_answers_404_until_folder_exists(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, root: Path
) -> None:
    emulator = await make_emulator(strict_parents=True)
    base = emulator.base_url
    token = await er.login(http, base)
    reply = await er.upload_whole(http, base, token, "s.txt", b"s", parent="\\strict")
    assert reply.status == 404
    assert not er.stored(root, "\\strict\\s.txt").exists()
    assert (await er.create_folder(http, base, token, "strict", "\\")).status == 201
    ok = await er.upload_whole(http, base, token, "s.txt", b"s", parent="\\strict")
    assert ok.status == 200, ok.text
    assert er.stored(root, "\\strict\\s.txt").read_bytes() == b"s"
    # The share's root always exists.
    assert (await er.upload_whole(http, base, token, "top.txt", b"t")).status == 200


# --- concurrency, cut bodies, two writers, session expiry (§5) ----------------------------------


async def test_fifty_concurrent_sessions(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    files = {f"c{i:02d}.bin": er.payload(3000 + i, seed=100 + i) for i in range(50)}
    replies: dict[str, er.Reply] = {}

    async def one(name: str, data: bytes) -> None:
        replies[name] = await er.upload_chunked(
            http, base, token, name, data, 1024, parent="\\many"
        )

    async with anyio.create_task_group() as tg:
        for name, data in files.items():
            tg.start_soon(one, name, data)
    assert {n: r.status for n, r in replies.items()} == {n: 200 for n in files}
    assert len({r.upload.file_guid for r in replies.values()}) == 50
    for name, data in files.items():
        assert er.stored(root, f"\\many\\{name}").read_bytes() == data


async def test_two_writers_on_one_session_get_409(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    rid = (await er.initiate(http, base, token, "race.bin", 20)).upload.request_id
    release = anyio.Event()
    slow: dict[str, er.Reply] = {}

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"AAAA"
        await release.wait()
        yield b"AAAAAA"

    async def slow_writer() -> None:
        # Content-Length is given, so aiohttp streams the body without chunked encoding.
        slow["reply"] = await er.chunk(
            http, base, token, rid, slow_body(), extra=[("Content-Length", "10")]
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_writer)
        # The first writer's body is being received (polled, bounded; not a guessed sleep).
        with anyio.fail_after(10):
            while emulator.statistics().receiving < 1:
                await anyio.sleep(0.005)
        second = await er.chunk(http, base, token, rid, b"BBBBB")
        release.set()
    assert second.status == 409, second.text
    assert second.upload.chunk_offset == 0
    assert slow["reply"].status == 200, slow["reply"].text
    assert slow["reply"].upload.chunk_offset == 10
    done = await er.chunk(http, base, token, rid, b"CCCCCCCCCC", eof=True)
    assert done.status == 200
    assert er.stored(root, "\\race.bin").read_bytes() == b"A" * 10 + b"C" * 10


async def test_body_cut_short_stores_nothing(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    data = er.payload(2000, seed=6)
    rid = (await er.initiate(http, base, token, "cut.bin", 2000, data[:500])).upload.request_id
    path = f"{URL(base).path}/{er.upload_path()}?uploadType=chunkedFile&requestId={rid}"
    head = er.raw_head(
        path,
        [("Authtoken", token), ("FileEOF", "0"), ("Accept", er.JSON)],
        1000,
        port=emulator.port,
    )
    await er.send_truncated(emulator.port, head, data[500:900])
    # The server notices the cut body when the socket closes; poll its offset, bounded.
    offsets = []
    for _ in range(20):
        reply = await er.initiate(http, base, token, "cut.bin", 2000)
        offsets.append((reply.status, reply.upload.chunk_offset))
        if reply.status == 409:
            break
        await anyio.sleep(0.05)
    assert offsets[-1] == (409, 500)
    resumed = await er.chunk(http, base, token, rid, data[500:], eof=True)
    assert resumed.status == 200, resumed.text
    assert er.stored(root, "\\cut.bin").read_bytes() == data


async def test_idle_session_expires_with_404(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, root: Path
) -> None:
    emulator = await make_emulator(session_ttl_seconds=1)
    base = emulator.base_url
    token = await er.login(http, base)
    rid = (await er.initiate(http, base, token, "ttl.bin", 8, b"abcd")).upload.request_id
    await anyio.sleep(1.6)
    assert (await er.chunk(http, base, token, rid, b"efgh", eof=True)).status == 404
    fresh = await er.initiate(http, base, token, "ttl.bin", 8, b"ABCD")
    assert fresh.status == 200, fresh.text
    assert fresh.upload.chunk_offset == 4
    assert not er.stored(root, "\\ttl.bin").exists()


# --- any valid name round-trips (property) -----------------------------------------------------


def _plain_name(name: str) -> bool:
    try:
        return protocol.split_remote_path(name) == (name,) and len(name.encode()) <= 200
    except ValueError:
        return False


NAMES = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\/"),
    min_size=1,
    max_size=40,
).filter(_plain_name)


@asynccontextmanager
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with er.client() as http:
        yield http


def test_any_valid_name_is_stored_under_that_name(tmp_path: Path) -> None:
    """§4: names are UTF-8 then base64 on the wire; whatever the name, the file keeps it."""
    root = tmp_path / "server"
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(running_emulator(emulator_config(root))) as emulator,
        portal.wrap_async_context_manager(_session()) as http,
    ):
        base = emulator.base_url
        token = portal.call(lambda: er.login(http, base))

        @settings(max_examples=30, deadline=None)
        @given(name=NAMES, data=st.binary(max_size=64))
        def roundtrip(name: str, data: bytes) -> None:
            reply = portal.call(
                lambda: er.upload_whole(http, base, token, name, data, parent="\\p")
            )
            assert reply.status == 200, (name, reply.text)
            assert (root / "1" / "p" / name).read_bytes() == data
            meta = portal.call(lambda: er.metadata(http, base, token, f"\\p\\{name}"))
            assert meta.status == 200, (name, meta.text)
            assert er.file_resources(meta.node)[0].name == name

        roundtrip()

"""Spec §7: createfolder, metadata, list (limit/offset headers) and the list of shares."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from bulkdrive import protocol
from bulkdrive.emulator import Emulator

import edge_raw as er

pytestmark = pytest.mark.anyio


def only_resource(reply: er.Reply) -> protocol.FileResource:
    resources = er.file_resources(reply.node)
    assert len(resources) == 1, reply.text
    return resources[0]


# --- createfolder -----------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["xml-body", "json-body"])
@pytest.mark.parametrize("accept", [er.JSON, er.XML])
async def test_create_folder_201_then_409(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    token: str,
    root: Path,
    as_json: bool,
    accept: str,
) -> None:
    base = emulator.base_url
    reply = await er.create_folder(http, base, token, "New", "\\", as_json=as_json, accept=accept)
    assert reply.status == 201, reply.text
    assert reply.node.name in (protocol.FILE_RESOURCE_RESP, "")
    resource = only_resource(reply)
    assert resource.name == "New"
    assert resource.is_directory
    assert resource.guid
    assert resource.path.rstrip("\\") == "\\New"
    assert (root / "1" / "New").is_dir()
    again = await er.create_folder(http, base, token, "New", "\\", as_json=as_json, accept=accept)
    assert again.status == 409


async def test_create_nested_folder(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    assert (await er.create_folder(http, base, token, "Parent")).status == 201
    reply = await er.create_folder(http, base, token, "Child", "\\Parent")
    assert reply.status == 201, reply.text
    assert only_resource(reply).path == "\\Parent\\Child"
    assert (root / "1" / "Parent" / "Child").is_dir()


async def test_create_folder_where_a_file_is_does_not_succeed(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    assert (await er.upload_whole(http, base, token, "taken", b"file")).status == 200
    reply = await er.create_folder(http, base, token, "taken")
    assert reply.status in (400, 409)
    assert er.stored(root, "\\taken").read_bytes() == b"file"


async def test_create_folder_on_view_only_share_is_403(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    reply = await er.create_folder(
        http, emulator.base_url, token, "nope", share_id=er.READONLY_SHARE_ID
    )
    assert reply.status == 403


async def test_create_folder_unknown_share_is_404(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    reply = await er.create_folder(http, emulator.base_url, token, "x", share_id="77")
    assert reply.status == 404


# --- metadata ---------------------------------------------------------------------------------


async def test_metadata_of_a_file(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    base = emulator.base_url
    data = er.payload(1234)
    assert (
        await er.upload_whole(http, base, token, "Tulip.jpg", data, parent="\\pictures")
    ).status == 200
    for accept in (er.JSON, er.XML):
        reply = await er.metadata(http, base, token, "\\pictures\\Tulip.jpg", accept=accept)
        assert reply.status == 200, reply.text
        assert reply.node.name in (protocol.FILE_RESOURCE_RESP, "")
        resource = only_resource(reply)
        assert resource.name == "Tulip.jpg"
        assert not resource.is_directory
        assert er.find_nodes(reply.node, "name")[0].get("file") == "1"
        assert resource.size == len(data)
        assert resource.modified_time == er.SAMPLE_MTIME
        assert resource.path == "\\pictures\\Tulip.jpg"
        assert resource.parent_path == "\\pictures"
        assert resource.guid


async def test_metadata_of_a_folder(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    base = emulator.base_url
    await er.upload_whole(http, base, token, "x.txt", b"x", parent="\\dir")
    resource = only_resource(await er.metadata(http, base, token, "\\dir"))
    assert resource.is_directory
    assert resource.name == "dir"


@pytest.mark.parametrize("spelling", ["/pics/a.txt", "\\\\pics\\\\a.txt", "pics\\a.txt\\"])
async def test_metadata_path_is_normalised(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, spelling: str
) -> None:
    base = emulator.base_url
    await er.upload_whole(http, base, token, "a.txt", b"abc", parent="\\pics")
    reply = await er.metadata(http, base, token, spelling)
    assert reply.status == 200, reply.text
    resource = only_resource(reply)
    assert resource.size == 3
    assert resource.path == "\\pics\\a.txt"


async def test_metadata_of_nothing_is_404(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    reply = await er.metadata(http, emulator.base_url, token, "\\no\\such.txt")
    assert reply.status == 404


async def test_unfinished_file_has_no_metadata(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    base = emulator.base_url
    await er.initiate(http, base, token, "partial.bin", 10, b"12345")
    assert (await er.metadata(http, base, token, "\\partial.bin")).status == 404


# --- list -------------------------------------------------------------------------------------


def names_of(reply: er.Reply) -> list[str]:
    return [r.name for r in er.file_resources(reply.node)]


def total_of(reply: er.Reply) -> int | None:
    for key in ("totalCount", "total", "count", "totalFileCount", "totalRecords"):
        if key in reply.node.fields:
            return reply.node.int(key)
    return None


async def test_list_direct_children_with_paging(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    base = emulator.base_url
    names = [f"f{i}.txt" for i in range(5)]
    for name in names:
        assert (await er.upload_whole(http, base, token, name, b"x", parent="\\lst")).status == 200
    await er.upload_whole(http, base, token, "hidden.txt", b"deep", parent="\\lst\\sub")
    await er.initiate(http, base, token, "unfinished.txt", 10, b"1", parent="\\lst")
    everything = await er.list_folder(http, base, token, "\\lst")
    assert everything.status == 200, everything.text
    assert sorted(names_of(everything)) == sorted([*names, "sub"])
    assert total_of(everything) == 6, everything.text
    sub = next(r for r in er.file_resources(everything.node) if r.name == "sub")
    assert sub.is_directory
    seen: list[str] = []
    for offset in (0, 2, 4):
        page = await er.list_folder(http, base, token, "\\lst", limit=2, offset=offset)
        assert page.status == 200
        assert total_of(page) == 6
        assert len(names_of(page)) == 2
        seen += names_of(page)
    assert sorted(seen) == sorted([*names, "sub"])
    past = await er.list_folder(http, base, token, "\\lst", limit=2, offset=10)
    assert past.status == 200
    assert names_of(past) == []


async def test_list_default_limit_is_50(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    base = emulator.base_url
    for i in range(55):
        reply = await er.upload_whole(http, base, token, f"n{i:02d}", b"", parent="\\wide")
        assert reply.status == 200
    reply = await er.list_folder(http, base, token, "\\wide")
    assert reply.status == 200
    assert len(names_of(reply)) == 50
    assert total_of(reply) == 55


async def test_list_of_missing_folder_is_404(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    assert (await er.list_folder(http, emulator.base_url, token, "\\missing")).status == 404


# --- shares -----------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [er.JSON, er.XML])
async def test_list_shares(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, accept: str
) -> None:
    reply = await er.list_shares(http, emulator.base_url, token, accept=accept)
    assert reply.status == 200, reply.text
    if accept == er.XML:
        assert reply.node.name == protocol.SHARES_RESP
    entries = {n.get("syncWebFolderId"): n for n in er.find_nodes(reply.node, "syncWebFolderId")}
    assert set(entries) == {"1", "2", "3"}
    assert entries["1"].get("syncWebFolderName") == "projects"
    assert entries["2"].get("syncWebFolderName") == "readonly"
    for entry in entries.values():
        assert entry.get("dirDelim") == "\\"
        assert entry.get("permission")
    assert entries["1"].get("permission") != entries["2"].get("permission")

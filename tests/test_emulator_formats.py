"""Spec §1: XML / flat JSON / wrapped JSON, Accept, the three prefixes, case, last header wins."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from bulkdrive import protocol
from bulkdrive.emulator import Emulator

import edge_raw as er
from conftest import EmulatorFactory

pytestmark = pytest.mark.anyio

PREFIXES = ["/webconsole/api", "/commandcenter/api", "/SearchSvc/CVWebService.svc"]


# --- Accept and the three formats -----------------------------------------------------------


@pytest.mark.parametrize("accept", [None, "*/*", "application/xml", "text/xml"])
async def test_xml_unless_json_is_asked_for(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, accept: str | None
) -> None:
    headers = [h for h in er.file_headers("x.txt", 3, token=token, eof=True) if h[0] != "Accept"]
    if accept is not None:
        headers.append(("Accept", accept))
    async with http.post(
        f"{emulator.base_url}/{er.upload_path()}",
        params=er.upload_params(),
        headers=headers,
        data=b"xml",
        skip_auto_headers=["Accept"],
    ) as resp:
        body = await resp.read()
        assert resp.status == 200, body
    assert body.lstrip().startswith(b"<")
    node = protocol.parse_body(body)
    assert node.name == protocol.UPLOAD_RESP
    assert node.get("chunkOffset") == "3"
    assert node.get("errorCode") == "0"
    assert node.get("requestId", "").isdigit()


async def test_flat_json_upload_reply(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    base = emulator.base_url
    reply = await er.initiate(http, base, token, "flat.bin", 10, b"12345", accept=er.JSON)
    assert reply.status == 200
    assert "json" in reply.content_type
    data = json.loads(reply.body)
    assert isinstance(data["requestId"], str)
    assert data["requestId"].isdigit()
    assert data["chunkOffset"] == 5
    assert data["errorCode"] == 0
    done = await er.chunk(http, base, token, data["requestId"], b"67890", eof=True)
    final = json.loads(done.body)
    assert final["chunkOffset"] == 10
    assert isinstance(final["fileGUID"], str)


async def test_wrapped_json_dialect(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, root: Path
) -> None:
    emulator = await make_emulator(json_dialect=protocol.Format.WRAPPED)
    base = emulator.base_url
    login = await er.post_login(http, base, er.login_json())
    assert login.status == 200
    login_data = json.loads(login.body)
    assert list(login_data) == [protocol.LOGIN_RESP]
    token = login_data[protocol.LOGIN_RESP]["@token"]
    assert token.startswith("QSDK ")
    reply = await er.initiate(http, base, token, "wrapped.bin", 8, b"1234")
    assert reply.status == 200
    data = json.loads(reply.body)
    assert list(data) == [protocol.UPLOAD_RESP]
    inner = data[protocol.UPLOAD_RESP]
    assert all(key.startswith("@") for key in inner), inner
    assert all(isinstance(value, str) for value in inner.values()), inner
    assert inner["@chunkOffset"] == "4"
    assert inner["@errorCode"] == "0"
    assert inner["@requestId"].isdigit()
    conflict = await er.initiate(http, base, token, "wrapped.bin", 8, b"zz")
    assert conflict.status == 409
    conflict_inner = json.loads(conflict.body)[protocol.UPLOAD_RESP]
    assert conflict_inner["@requestId"] == inner["@requestId"]
    assert conflict_inner["@chunkOffset"] == "4"
    assert conflict_inner["@errorCode"] == "409"
    done = await er.chunk(http, base, token, inner["@requestId"], b"5678", eof=True)
    assert done.status == 200
    assert done.upload.chunk_offset == 8
    assert er.stored(root, "\\wrapped.bin").read_bytes() == b"12345678"
    # XML stays the default in the wrapped dialect too.
    xml = await er.metadata(http, base, token, "\\wrapped.bin", accept=er.XML)
    assert xml.body.lstrip().startswith(b"<")


async def test_wrapped_dialect_401(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(json_dialect=protocol.Format.WRAPPED)
    reply = await er.upload_whole(http, emulator.base_url, None, "w.txt", b"w")
    assert reply.status == 401
    assert reply.node.int("errorCode") == 5


async def error_statuses(
    http: aiohttp.ClientSession, base: str, token: str, accept: str
) -> list[tuple[int, int, bool]]:
    """(status, errorCode, errorString) of a set of failing upload requests in one format."""
    name = f"open-{accept.split('/')[1]}.bin"
    await er.initiate(http, base, token, name, 4, b"ab")
    replies = [
        await er.upload_whole(http, base, None, "a.txt", b"a", accept=accept),
        await er.upload_whole(http, base, token, "a.txt", b"a", share_id="404", accept=accept),
        await er.upload_whole(http, base, token, "a.txt", b"a", share_id="2", accept=accept),
        await er.initiate(http, base, token, "a.txt", 9, b"toolongbody", accept=accept),
        await er.initiate(http, base, token, name, 4, b"cd", accept=accept),
        await er.chunk(http, base, token, "123", b"x", accept=accept),
    ]
    return [
        (
            r.status,
            r.node.int("errorCode"),
            bool(r.node.get("errorString") or r.node.get("errorMessage")),
        )
        for r in replies
    ]


async def test_accept_never_changes_the_status_code(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    base = emulator.base_url
    as_json = await error_statuses(http, base, token, er.JSON)
    as_xml = await error_statuses(http, base, token, er.XML)
    assert [s for s, _, _ in as_json] == [401, 404, 403, 400, 409, 404]
    assert as_json == as_xml
    for _, code, has_text in as_json:
        assert code != 0
        assert has_text


# --- prefixes and case ------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_every_route_under_every_prefix(
    emulator: Emulator, http: aiohttp.ClientSession, root: Path, prefix: str
) -> None:
    base = emulator.url(prefix)
    assert base.endswith(prefix)
    token = await er.login(http, base)
    name = f"{prefix.strip('/').replace('/', '_')}.txt"
    reply = await er.upload_chunked(http, base, token, name, b"prefixed", 3, parent="\\p")
    assert reply.status == 200, reply.text
    assert er.stored(root, f"\\p\\{name}").read_bytes() == b"prefixed"
    assert (await er.metadata(http, base, token, f"\\p\\{name}")).status == 200
    assert (await er.list_folder(http, base, token, "\\p")).status == 200
    assert (await er.create_folder(http, base, token, "made", "\\p")).status == 201
    assert (await er.list_shares(http, base, token)).status == 200
    device = "dev"
    renewed = await er.renew(http, base, await er.login(http, base, device_id=device), device)
    assert renewed.status == 200
    assert (await er.logout(http, base, token)).status == 200


@pytest.mark.parametrize("prefix", ["/WebConsole/API", "/searchsvc/cvwebservice.svc"])
async def test_prefix_words_ignore_case(
    emulator: Emulator, http: aiohttp.ClientSession, prefix: str
) -> None:
    reply = await er.post_login(http, emulator.url(prefix), er.login_json())
    assert reply.status == 200
    assert reply.node.get("token")


async def test_emulator_base_url_is_webconsole(emulator: Emulator) -> None:
    assert emulator.base_url == f"http://127.0.0.1:{emulator.port}/webconsole/api"


@pytest.mark.parametrize(
    "path",
    [
        "DRIVE/SHARE/1/FILE/ACTION/UPLOAD",
        "Drive/Share/1/File/Action/Upload",
        "drive/share/1/file/ACTION/upload",
    ],
)
async def test_fixed_path_words_ignore_case(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path, path: str
) -> None:
    headers = er.file_headers("case.txt", 4, token=token, eof=True)
    reply = await er.request(
        http,
        "POST",
        f"{emulator.base_url}/{path}",
        headers=headers,
        params=er.upload_params(),
        data=b"case",
    )
    assert reply.status == 200, reply.text
    assert er.stored(root, "\\case.txt").read_bytes() == b"case"


@pytest.mark.parametrize("path", ["Drive/Share", "DRIVE/share"])
async def test_share_list_path_ignores_case(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, path: str
) -> None:
    reply = await er.request(
        http, "GET", f"{emulator.base_url}/{path}", headers={"Authtoken": token}
    )
    assert reply.status == 200


async def test_header_names_ignore_case(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    headers = [
        ("accept", er.JSON),
        ("AUTHTOKEN", token),
        ("filename", protocol.encode_name("lower.txt")),
        ("FILESIZE", "5"),
        ("parentfolderpath", protocol.encode_name("\\hdr")),
        ("fileeof", "1"),
        ("filemodifiedTIME", str(er.SAMPLE_MTIME)),
    ]
    reply = await er.post_upload(http, emulator.base_url, headers, b"lower")
    assert reply.status == 200, reply.text
    assert er.stored(root, "\\hdr\\lower.txt").read_bytes() == b"lower"


@pytest.mark.parametrize(
    ("eof_headers", "completes"),
    [
        ([("FileEOF", "0,1")], True),
        ([("FileEOF", "1,0")], False),
        ([("FileEOF", "0"), ("FileEOF", "1")], True),
        ([("FileEOF", "1"), ("FileEOF", "0")], False),
    ],
    ids=["list-0,1", "list-1,0", "repeated-0-1", "repeated-1-0"],
)
async def test_last_header_value_wins(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    token: str,
    root: Path,
    eof_headers: list[tuple[str, str]],
    completes: bool,
) -> None:
    base = emulator.base_url
    rid = (await er.initiate(http, base, token, "last.bin", 6, b"abc")).upload.request_id
    headers = [("Accept", er.JSON), ("Authtoken", token), *eof_headers]
    reply = await er.post_upload(http, base, headers, b"def", request_id=rid)
    assert reply.status == 200, reply.text
    assert reply.upload.chunk_offset == 6
    assert (reply.upload.file_guid is not None) is completes
    assert er.stored(root, "\\last.bin").exists() is completes


async def test_repeated_filesize_last_wins(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    headers = [
        *er.file_headers("size.txt", 99, token=token, eof=True),
        ("FileSize", "4"),
    ]
    reply = await er.post_upload(http, emulator.base_url, headers, b"four")
    assert reply.status == 200, reply.text
    assert er.stored(root, "\\size.txt").read_bytes() == b"four"


@pytest.mark.parametrize(
    "content_type", ["multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]
)
async def test_content_type_is_ignored(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path, content_type: str
) -> None:
    body = b"a=1&b=--x\r\n"
    headers = [
        *er.file_headers("raw.bin", len(body), token=token, eof=True),
        ("Content-Type", content_type),
    ]
    reply = await er.post_upload(http, emulator.base_url, headers, body)
    assert reply.status == 200, reply.text
    assert er.stored(root, "\\raw.bin").read_bytes() == body

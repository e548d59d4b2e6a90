"""Spec §2: Login (JSON and XML), the token, idle expiry, RenewLoginToken, Logout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import anyio
import pytest

from bulkdrive.emulator import Emulator

import edge_raw as er
from conftest import EmulatorFactory

pytestmark = pytest.mark.anyio

TOKEN_RE = re.compile(r"^QSDK [0-9a-fA-F]{16,}$")


@pytest.mark.parametrize("path", ["Login", "login", "LOGIN"])
async def test_login_json_returns_qsdk_token(
    emulator: Emulator, http: aiohttp.ClientSession, path: str
) -> None:
    reply = await er.post_login(http, emulator.base_url, er.login_json(), path=path)
    assert reply.status == 200
    node = reply.node
    assert TOKEN_RE.match(node.get("token") or ""), reply.text
    assert node.get("userName") == er.USER
    assert node.get("userGUID")


async def test_login_accepts_optional_fields(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    body = er.login_json(domain="corp", deviceId="laptop-1")
    data = json.loads(body)
    data["timeout"] = 5
    reply = await er.post_login(http, emulator.base_url, json.dumps(data))
    assert reply.status == 200
    assert TOKEN_RE.match(reply.node.get("token") or ""), reply.text


async def test_login_never_echoes_the_password(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    for accept in (er.JSON, er.XML):
        reply = await er.post_login(http, emulator.base_url, er.login_json(), accept=accept)
        assert er.PASSWORD not in reply.text
        assert er.b64(er.PASSWORD) not in reply.text


async def test_login_xml_body_and_xml_response(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    body = (
        f'<DM2ContentIndexing_CheckCredentialReq username="{er.USER}" '
        f'password="{er.b64(er.PASSWORD)}"/>'
    )
    reply = await er.post_login(
        http, emulator.base_url, body, accept=er.XML, content_type="application/xml"
    )
    assert reply.status == 200
    assert reply.body.lstrip().startswith(b"<")
    node = reply.node
    assert node.name == "DM2ContentIndexing_CheckCredentialResp"
    assert TOKEN_RE.match(node.get("token") or ""), reply.text


async def test_login_token_is_usable(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    token = await er.login(http, emulator.base_url)
    reply = await er.list_shares(http, emulator.base_url, token)
    assert reply.status == 200


@pytest.mark.parametrize(
    ("user", "password"), [(er.USER, "wrong-password"), ("mallory", er.PASSWORD)]
)
@pytest.mark.parametrize("accept", [er.JSON, er.XML])
async def test_login_wrong_credentials_is_200_without_token(
    emulator: Emulator, http: aiohttp.ClientSession, user: str, password: str, accept: str
) -> None:
    reply = await er.post_login(
        http, emulator.base_url, er.login_json(user, password), accept=accept
    )
    assert reply.status == 200
    node = reply.node
    assert not node.get("token")
    errs = node.all("errList")
    assert errs, reply.text
    assert errs[0].int("errorCode") != 0
    assert errs[0].get("errLogMessage")
    assert er.PASSWORD not in reply.text


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        json.dumps({"username": er.USER}).encode(),
        json.dumps({"username": er.USER, "password": "%%%not base64%%%"}).encode(),
    ],
    ids=["malformed", "empty", "no-password", "password-not-base64"],
)
async def test_login_bad_body_is_400(
    emulator: Emulator, http: aiohttp.ClientSession, body: bytes
) -> None:
    reply = await er.post_login(http, emulator.base_url, body)
    assert reply.status == 400


@pytest.mark.parametrize("accept", [er.JSON, er.XML])
@pytest.mark.parametrize(
    "token", [None, "QSDK 0123456789abcdef0123456789abcdef"], ids=["missing", "unknown"]
)
async def test_missing_or_unknown_token_is_401_access_denied(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    accept: str,
    token: str | None,
) -> None:
    reply = await er.upload_whole(http, emulator.base_url, token, "a.txt", b"a", accept=accept)
    assert reply.status == 401
    node = reply.node
    assert node.int("errorCode") == 5, reply.text
    assert node.get("errorMessage") == "Access denied"
    if accept == er.JSON:
        data = json.loads(reply.body)
        assert data["errorCode"] == 5
        assert data["errorMessage"] == "Access denied"
    else:
        assert reply.body.lstrip().startswith(b"<")
    assert not er.stored(tmp_path / "server", "\\a.txt").exists()


@pytest.mark.parametrize("call", ["upload", "chunk", "metadata", "list", "createfolder", "shares"])
async def test_every_call_needs_a_token(
    emulator: Emulator, http: aiohttp.ClientSession, call: str
) -> None:
    base = emulator.base_url
    token = await er.login(http, base)
    started = await er.initiate(http, base, token, "open.bin", 10, b"01234")
    assert started.status == 200
    bad = "QSDK feedfacefeedfacefeedfacefeedface"
    if call == "upload":
        reply = await er.upload_whole(http, base, bad, "x.txt", b"x")
    elif call == "chunk":
        reply = await er.chunk(http, base, bad, started.upload.request_id, b"56789", eof=True)
    elif call == "metadata":
        reply = await er.metadata(http, base, bad, "\\")
    elif call == "list":
        reply = await er.list_folder(http, base, bad, "\\")
    elif call == "createfolder":
        reply = await er.create_folder(http, base, bad, "nope")
    else:
        reply = await er.list_shares(http, base, bad)
    assert reply.status == 401
    assert reply.node.int("errorCode") == 5
    # The refused chunk was not applied: the session still holds 5 bytes.
    again = await er.initiate(http, base, token, "open.bin", 10, b"")
    assert again.status == 409
    assert again.upload.chunk_offset == 5


async def test_token_expires_after_idle_lifetime(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(token_idle_seconds=1)
    base = emulator.base_url
    token = await er.login(http, base, device_id="dev-1")
    assert (await er.list_shares(http, base, token)).status == 200
    await anyio.sleep(1.6)
    for accept in (er.JSON, er.XML):
        reply = await er.upload_whole(http, base, token, "late.txt", b"late", accept=accept)
        assert reply.status == 401
        assert reply.node.int("errorCode") == 5
        assert reply.node.get("errorMessage") == "Access denied"


async def test_expired_token_can_be_renewed_with_its_device_id(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    emulator = await make_emulator(token_idle_seconds=1)
    base = emulator.base_url
    token = await er.login(http, base, device_id="dev-1")
    await anyio.sleep(1.6)
    assert (await er.list_shares(http, base, token)).status == 401
    reply = await er.renew(http, base, token, "dev-1")
    assert reply.status == 200, reply.text
    new = reply.node.get("token") or ""
    assert TOKEN_RE.match(new), reply.text
    done = await er.upload_whole(http, base, new, "renewed.txt", b"fresh")
    assert done.status == 200, done.text
    assert er.stored(tmp_path / "server", "\\renewed.txt").read_bytes() == b"fresh"


async def test_renew_with_live_token_and_right_device(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    base = emulator.base_url
    token = await er.login(http, base, device_id="laptop-7")
    reply = await er.renew(http, base, token, "laptop-7")
    assert reply.status == 200
    new = reply.node.get("token") or ""
    assert TOKEN_RE.match(new)
    assert (await er.list_shares(http, base, new)).status == 200


@pytest.mark.parametrize("device", ["other-device", ""])
async def test_renew_with_wrong_device_id_is_401(
    emulator: Emulator, http: aiohttp.ClientSession, device: str
) -> None:
    base = emulator.base_url
    token = await er.login(http, base, device_id="laptop-7")
    reply = await er.renew(http, base, token, device)
    assert reply.status == 401
    assert not reply.node.get("token")


async def test_renew_unknown_token_is_401(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    reply = await er.renew(
        http, emulator.base_url, "QSDK 00112233445566778899aabbccddeeff", "laptop-7"
    )
    assert reply.status == 401


async def test_logout_then_token_is_refused(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    base = emulator.base_url
    token = await er.login(http, base)
    reply = await er.logout(http, base, token)
    assert reply.status == 200
    assert reply.text.strip() == "User logged out"
    assert (await er.list_shares(http, base, token)).status == 401
    assert (await er.logout(http, base, token)).status == 401


@pytest.mark.parametrize("token", [None, "QSDK 0123456789abcdef0123456789abcdef"])
async def test_logout_with_invalid_token_is_401(
    emulator: Emulator, http: aiohttp.ClientSession, token: str | None
) -> None:
    assert (await er.logout(http, emulator.base_url, token)).status == 401


async def test_two_logins_get_distinct_tokens(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    first = await er.login(http, emulator.base_url)
    second = await er.login(http, emulator.base_url)
    assert first != second
    assert (await er.logout(http, emulator.base_url, first)).status == 200
    assert (await er.list_shares(http, emulator.base_url, second)).status == 200

"""Spec §6: FullFileHash and BlockLevelHash, checked against the spec's test vectors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest

from bulkdrive import protocol
from bulkdrive.emulator import Emulator

import edge_raw as er

pytestmark = pytest.mark.anyio

ABC = b"abc"
ABC_FULL = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
ABC_BLOCK = "4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358"
BIG = bytes(range(256)) * 16_384 + b"xyz"
BIG_FULL = "e683560c8ed136154c0af206b9c74af7d811054c8b4850e5fb9a7eb89fadd470"
BIG_BLOCK = "3591d0ebb461ef47ef9180e10897963478114b9baf06b62fdf9dede6046634ea"
INTEGRITY_FAILED = "file integrity check failed"
EMPTY_FULL = hashlib.sha256(b"").hexdigest()
EMPTY_BLOCK = hashlib.sha256(hashlib.sha256(b"").digest()).hexdigest()


def test_spec_vectors_are_what_the_tests_compute() -> None:
    assert len(BIG) == 4_194_307
    assert er.sha256_hex(ABC) == ABC_FULL
    assert er.block_level_hash([ABC]) == ABC_BLOCK
    assert er.sha256_hex(BIG) == BIG_FULL
    assert er.block_level_hash([BIG[: protocol.BLOCK_SIZE], BIG[protocol.BLOCK_SIZE :]]) == (
        BIG_BLOCK
    )


@pytest.mark.parametrize("digest", [ABC_FULL, ABC_FULL.upper()], ids=["lower", "upper"])
async def test_full_file_hash_match_is_verified(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path, digest: str
) -> None:
    reply = await er.upload_whole(
        http,
        emulator.base_url,
        token,
        "abc.txt",
        ABC,
        extra=[(protocol.FULL_FILE_HASH, digest)],
    )
    assert reply.status == 200, reply.text
    assert reply.upload.integrity_verified
    assert reply.node.get("fileIntegrityVerified") == "1"
    assert er.stored(root, "\\abc.txt").read_bytes() == ABC


async def test_no_hash_means_no_verified_flag(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    reply = await er.upload_whole(http, emulator.base_url, token, "plain.txt", ABC)
    assert reply.status == 200
    assert reply.node.get("fileIntegrityVerified") is None


async def test_full_file_hash_on_last_chunk(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.upload_chunked(
        http,
        emulator.base_url,
        token,
        "abc2.txt",
        ABC,
        1,
        last_extra=[(protocol.FULL_FILE_HASH, ABC_FULL)],
    )
    assert reply.status == 200, reply.text
    assert reply.upload.integrity_verified
    assert er.stored(root, "\\abc2.txt").read_bytes() == ABC


async def test_full_file_hash_with_full_file_upload(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    headers = [*er.file_headers("ff.txt", 3, token=token), (protocol.FULL_FILE_HASH, ABC_FULL)]
    reply = await er.post_upload(http, emulator.base_url, headers, ABC, upload_type="fullFile")
    assert reply.status == 200, reply.text
    assert reply.upload.integrity_verified
    bad = [*er.file_headers("ff2.txt", 3, token=token), (protocol.FULL_FILE_HASH, BIG_FULL)]
    refused = await er.post_upload(http, emulator.base_url, bad, ABC, upload_type="fullFile")
    assert refused.status == 400
    assert not er.stored(root, "\\ff2.txt").exists()


async def test_full_file_hash_mismatch_discards_file_and_session(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    base = emulator.base_url
    rid = (await er.initiate(http, base, token, "bad.txt", 3, b"ab")).upload.request_id
    reply = await er.chunk(
        http, base, token, rid, b"c", eof=True, extra=[(protocol.FULL_FILE_HASH, BIG_FULL)]
    )
    assert reply.status == 400
    assert reply.upload.error_string.startswith(INTEGRITY_FAILED), reply.text
    assert not er.stored(root, "\\bad.txt").exists()
    assert (await er.chunk(http, base, token, rid, b"c", eof=True)).status == 404
    fresh = await er.initiate(http, base, token, "bad.txt", 3)
    assert fresh.status == 200, fresh.text
    assert fresh.upload.chunk_offset == 0


@pytest.mark.parametrize("header", [protocol.BLOCK_LEVEL_HASH, protocol.BLOCK_LEVEL_HASH_ALIAS])
async def test_block_level_hash_abc(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path, header: str
) -> None:
    reply = await er.upload_whole(
        http,
        emulator.base_url,
        token,
        "blk.txt",
        ABC,
        verify_block=True,
        extra=[(header, ABC_BLOCK)],
    )
    assert reply.status == 200, reply.text
    assert reply.upload.integrity_verified
    assert er.stored(root, "\\blk.txt").read_bytes() == ABC


async def test_block_level_and_full_hash_over_two_4mib_blocks(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.upload_chunked(
        http,
        emulator.base_url,
        token,
        "big.bin",
        BIG,
        protocol.BLOCK_SIZE,
        verify_block=True,
        last_extra=[
            (protocol.BLOCK_LEVEL_HASH, BIG_BLOCK.upper()),
            (protocol.FULL_FILE_HASH, BIG_FULL),
        ],
    )
    assert reply.status == 200, reply.text
    assert reply.upload.integrity_verified
    assert reply.upload.chunk_offset == len(BIG)
    assert er.stored(root, "\\big.bin").read_bytes() == BIG


async def test_block_level_hash_of_empty_file_is_one_empty_block(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.upload_whole(
        http,
        emulator.base_url,
        token,
        "empty.bin",
        b"",
        verify_block=True,
        extra=[(protocol.BLOCK_LEVEL_HASH, EMPTY_BLOCK), (protocol.FULL_FILE_HASH, EMPTY_FULL)],
    )
    assert reply.status == 200, reply.text
    assert reply.upload.integrity_verified
    assert er.stored(root, "\\empty.bin").read_bytes() == b""


async def test_block_level_hash_is_per_received_chunk(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    """(chosen, strict) chunks of 1 byte are 3 blocks: the 4 MiB-block digest must fail."""
    base = emulator.base_url
    reply = await er.upload_chunked(
        http,
        base,
        token,
        "split.txt",
        ABC,
        1,
        verify_block=True,
        last_extra=[(protocol.BLOCK_LEVEL_HASH, ABC_BLOCK)],
    )
    assert reply.status == 400
    assert reply.upload.error_string.startswith(INTEGRITY_FAILED), reply.text
    assert not er.stored(root, "\\split.txt").exists()
    # The digest of the chunks as received is what the emulator accepts.
    per_chunk = er.block_level_hash([b"a", b"b", b"c"])
    ok = await er.upload_chunked(
        http,
        base,
        token,
        "split.txt",
        ABC,
        1,
        verify_block=True,
        last_extra=[(protocol.BLOCK_LEVEL_HASH, per_chunk)],
    )
    assert ok.status == 200, ok.text
    assert er.stored(root, "\\split.txt").read_bytes() == ABC


async def test_block_level_hash_required_when_asked_for(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.upload_whole(
        http, emulator.base_url, token, "nohash.txt", ABC, verify_block=True
    )
    assert reply.status == 400
    assert not er.stored(root, "\\nohash.txt").exists()


async def test_block_level_hash_mismatch(
    emulator: Emulator, http: aiohttp.ClientSession, token: str, root: Path
) -> None:
    reply = await er.upload_whole(
        http,
        emulator.base_url,
        token,
        "mism.txt",
        ABC,
        verify_block=True,
        extra=[(protocol.BLOCK_LEVEL_HASH, ABC_FULL)],
    )
    assert reply.status == 400
    assert reply.upload.error_string.startswith(INTEGRITY_FAILED), reply.text
    assert not er.stored(root, "\\mism.txt").exists()


async def test_integrity_error_string_is_the_spec_wording(
    emulator: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    """§5: on a hash mismatch the errorString is `file integrity check failed`."""
    reply = await er.upload_whole(
        http,
        emulator.base_url,
        token,
        "wording.txt",
        ABC,
        extra=[(protocol.FULL_FILE_HASH, BIG_FULL)],
    )
    assert reply.status == 400
    assert reply.upload.error_string == INTEGRITY_FAILED

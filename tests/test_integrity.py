"""Block-level and full-file SHA-256 (spec §6): the spec's vectors, and running hashes."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkdrive.integrity import (
    BlockHasher,
    extended,
    hash_off_loop,
)
from bulkdrive.protocol import BLOCK_SIZE

BYTES_0_255_THEN_XYZ = bytes(range(256)) * 16_384 + b"xyz"


def block_level_hash(data: bytes) -> str:
    """BlockLevelHash of a whole file held in memory, fed to the running hasher at once."""
    hasher = BlockHasher()
    hasher.update(data)
    return hasher.hexdigest()


def test_spec_vectors() -> None:
    assert _sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert block_level_hash(b"abc") == (
        "4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358"
    )
    assert len(BYTES_0_255_THEN_XYZ) == 4_194_307
    assert _sha256_hex(BYTES_0_255_THEN_XYZ) == (
        "e683560c8ed136154c0af206b9c74af7d811054c8b4850e5fb9a7eb89fadd470"
    )
    assert block_level_hash(BYTES_0_255_THEN_XYZ) == (
        "3591d0ebb461ef47ef9180e10897963478114b9baf06b62fdf9dede6046634ea"
    )


def test_empty_file_is_one_empty_block() -> None:
    empty_digest = hashlib.sha256(b"").digest()
    assert block_level_hash(b"") == hashlib.sha256(empty_digest).hexdigest()


def test_exact_multiple_has_no_trailing_empty_block() -> None:
    data = bytes(range(256)) * (2 * BLOCK_SIZE // 256)
    first, second = data[:BLOCK_SIZE], data[BLOCK_SIZE:]
    digests = hashlib.sha256(first).digest() + hashlib.sha256(second).digest()
    assert block_level_hash(data) == hashlib.sha256(digests).hexdigest()


def _reference(data: bytes, block: int) -> str:
    blocks = [data[i : i + block] for i in range(0, len(data), block)] or [b""]
    return hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)).hexdigest()


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8),
    block=st.integers(min_value=1, max_value=64),
)
def test_pieces_of_any_size_give_the_whole_file_hash(
    data: bytes, cuts: list[int], block: int
) -> None:
    hasher = BlockHasher(block)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, end in itertools.pairwise(bounds):
        hasher.update(data[start:end])
    assert hasher.position == len(data)
    assert hasher.hexdigest() == _reference(data, block)


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    block=st.integers(min_value=1, max_value=48),
    kinds=st.lists(st.sampled_from((bytes, bytearray, memoryview)), min_size=9, max_size=9),
)
def test_bytes_bytearrays_and_views_hash_alike_as_do_copies_along_the_way(
    data: bytes, cuts: list[int], block: int, kinds: list[type]
) -> None:
    # bytes within a block take a shorter path than other buffers: both must agree, also
    # on the last whole block's digest and on copies made between pieces (a fresh hasher's
    # copy holds no hash object yet).
    plain, mixed = BlockHasher(block), BlockHasher(block)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for (start, end), kind in zip(itertools.pairwise(bounds), kinds, strict=False):
        mixed = mixed.copy()
        plain.update(data[start:end])
        mixed.update(kind(data[start:end]))
        assert mixed.position == plain.position == end
        assert mixed.last_block == plain.last_block
        assert mixed.hexdigest() == plain.hexdigest() == _reference(data[:end], block)
    assert mixed.copy().hexdigest() == _reference(data, block)


@settings(max_examples=100, deadline=None)
@given(prefix=st.binary(max_size=100), a=st.binary(max_size=100), b=st.binary(max_size=100))
def test_copies_are_independent(prefix: bytes, a: bytes, b: bytes) -> None:
    base = BlockHasher(16)
    base.update(prefix)
    with_a = extended(base, a)
    with_b = extended(base, b)
    assert base.position == len(prefix)
    assert base.hexdigest() == _reference(prefix, 16)
    assert with_a.hexdigest() == _reference(prefix + a, 16)
    assert with_b.hexdigest() == _reference(prefix + b, 16)


@pytest.mark.anyio
async def test_hash_off_loop_matches_inline_for_large_and_small_buffers() -> None:
    for data in (b"x" * 10, BYTES_0_255_THEN_XYZ):
        start = BlockHasher()
        start.update(b"head")
        off_loop = await hash_off_loop(start, memoryview(data))
        assert off_loop.hexdigest() == extended(start, data).hexdigest()
        assert start.position == 4  # the original is untouched


def _sha256_hex(data: bytes) -> str:
    """FullFileHash, as the spec's test vectors give it: SHA-256 of the whole file, in hex."""
    return hashlib.sha256(data).hexdigest()

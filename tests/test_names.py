"""Names as the server gets them: the escape mapping, the journal's keys, Windows' refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, Secret
from bulkdrive.emulator import Emulator
from bulkdrive.emulator.wire import windows_name_problem
from bulkdrive.errors import InvalidName, NameRefused
from bulkdrive.journal import FileRecord, FileState, Journal
from bulkdrive.names import InvalidNames, check_name, is_utf8, local_name, remote_name

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory

pytestmark = pytest.mark.anyio

QUOTE = "\u201b"


def test_invalid_bytes_are_escaped_as_quote_and_hex() -> None:
    assert remote_name(os.fsdecode(b"m\xe9.txt")) == f"m{QUOTE}E9.txt"
    assert remote_name(os.fsdecode(b"\x83e\x83X")) == f"{QUOTE}83e{QUOTE}83X"
    assert remote_name("plain/é 名前.txt") == "plain/é 名前.txt"  # valid names unchanged
    assert remote_name(f"a{QUOTE}b") == f"a{QUOTE}b"  # a quote that cannot be misread stays
    assert remote_name(f"a{QUOTE}41") == f"a{QUOTE}{QUOTE}41"  # one that could is doubled


@given(st.binary(max_size=40))
def test_the_mapping_is_reversible_and_valid_utf8(raw: bytes) -> None:
    name = os.fsdecode(raw.replace(b"/", b"_").replace(b"\0", b"_"))
    remote = remote_name(name)
    remote.encode("utf-8")  # always valid UTF-8
    assert os.fsencode(local_name(remote)) == os.fsencode(name)


@given(st.text(alphabet=st.sampled_from(["A", "9", "f", QUOTE, "é", "\udce9", "\udc83"])))
def test_quotes_and_hex_digits_next_to_escapes_round_trip(name: str) -> None:
    assert local_name(remote_name(name)) == name
    if "\udce9" not in name and "\udc83" not in name:
        assert is_utf8(name)


def test_fail_policy_names_the_file() -> None:
    check_name(os.fsdecode(b"n\xe9"), InvalidNames.ESCAPE)
    with pytest.raises(InvalidName, match=r"not valid UTF-8: n\\xe9"):
        check_name(os.fsdecode(b"n\xe9"), InvalidNames.FAIL)
    check_name("é", InvalidNames.FAIL)


async def test_journal_keys_hold_any_name_losslessly(tmp_path: Path) -> None:
    names = [os.fsdecode(b"m\xe9"), "m\u00e9", "m\\xe9", os.fsdecode(b"d\xff/x")]
    path = tmp_path / "j.sqlite"
    async with Journal.open(path) as journal:
        for i, name in enumerate(names):
            await journal.record(
                FileRecord(name, i + 1, 0, FileState.FAILED, last_error=f"bad {name}")
            )
        await journal.flush()
    async with Journal.open(path) as journal:
        found = await journal.lookup_many(names)
        assert {n: r.size for n, r in found.items()} == {n: i + 1 for i, n in enumerate(names)}
        record = journal.lookup(names[0])
        assert record is not None and record.relative == names[0]
        assert {r.relative for r in journal.failures()} == set(names)
        assert journal.summary().files[FileState.FAILED] == len(names)  # one row each


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("CON", True),
        ("con.txt", True),
        ("COM1", True),
        ("lpt9.log", True),
        ("a?b", True),
        ('say "hi"', True),
        ("tab\there", True),
        ("trailing.", True),
        ("trailing ", True),
        ("CONSOLE", False),
        ("COM10", False),
        ("ok name.txt", False),
        ("é.txt", False),
    ],
)
def test_windows_names(name: str, refused: bool) -> None:
    assert (windows_name_problem(name) is not None) is refused


async def test_windows_names_server_answers_400_name_refused(
    make_emulator: EmulatorFactory,
) -> None:
    emulator: Emulator = await make_emulator(windows_names=True)
    credentials = Credentials(user=USER, password=Secret(PASSWORD))
    async with EdgeDriveClient.connect(emulator.base_url, credentials, share_id=SHARE_ID) as c:
        with pytest.raises(NameRefused, match="not allowed on a Windows file system"):
            await c.create_folder("\\", "NUL")
        assert await c.create_folder("\\", "fine")

"""The public library API: few names, all importable from `bulkdrive`, used end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import bulkdrive
from bulkdrive.emulator import Emulator

from conftest import PASSWORD, SHARE_ID, USER
from trees import assert_stored, make_tree

pytestmark = pytest.mark.anyio


async def test_public_names_upload_a_file_and_a_tree(emulator: Emulator, tmp_path: Path) -> None:
    from bulkdrive import Credentials, EdgeDriveClient, Secret, upload_file, upload_tree

    source = make_tree(tmp_path / "src", small_files=20)
    one = tmp_path / "one.txt"
    one.write_bytes(b"one file")
    credentials = Credentials(USER, Secret(PASSWORD))
    async with EdgeDriveClient.connect(emulator.base_url, credentials, share_id=SHARE_ID) as c:
        result = await upload_file(c, one, "\\single")
        summary = await upload_tree(c, source, "\\tree")
    share = emulator.config.root / SHARE_ID
    assert (share / "single" / "one.txt").read_bytes() == b"one file"
    assert len(result.file_guid) == 32 and result.bytes_sent == len(b"one file")
    assert summary.files.failed == 0
    assert summary.files.uploaded == assert_stored(source, share / "tree")


def test_every_exported_name_resolves() -> None:
    for name in bulkdrive.__all__:
        assert getattr(bulkdrive, name) is not None, name
    with pytest.raises(AttributeError):
        _ = bulkdrive.no_such_name  # type: ignore[attr-defined]


def test_the_emulator_does_not_import_the_uploader() -> None:
    code = (
        "import sys, bulkdrive.emulator; "
        "print(sorted(m for m in sys.modules if m in "
        "('bulkdrive.client', 'bulkdrive.upload', 'bulkdrive.scheduler', 'bulkdrive.journal')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

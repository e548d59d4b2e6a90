"""The public library API: few names, all importable from `bulkdrive`, used end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

import bulkdrive
from bulkdrive.emulator import Emulator

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory
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


#: The public surface of `bulkdrive`, name → the module that defines it. A change here is a
#: change of the library's API: say so in the changelog.
PUBLIC = {
    "BulkdriveError": "bulkdrive.errors",
    "Credentials": "bulkdrive.config",
    "EdgeDriveClient": "bulkdrive.client",
    "RetryPolicy": "bulkdrive.config",
    "RunSummary": "bulkdrive.report",
    "Secret": "bulkdrive.config",
    "Timeouts": "bulkdrive.config",
    "TransferConfig": "bulkdrive.config",
    "UploadResult": "bulkdrive.upload",
    "WalkFilters": "bulkdrive.walk",
    "upload_file": "bulkdrive.upload",
    "upload_tree": "bulkdrive.scheduler",
}


def test_the_public_names_are_pinned() -> None:
    assert sorted(bulkdrive.__all__) == sorted(PUBLIC)
    assert len(set(bulkdrive.__all__)) == len(bulkdrive.__all__)


def test_every_exported_name_resolves_to_its_home() -> None:
    for name, home in PUBLIC.items():
        value = getattr(bulkdrive, name)
        assert value.__module__ == home, name
        assert value.__name__ == name, name
    with pytest.raises(AttributeError):
        _ = bulkdrive.no_such_name


def test_the_package_namespace_holds_no_other_public_name() -> None:
    """Importing `bulkdrive` leaks no helper: only the pinned names and submodules."""
    code = (
        "import bulkdrive, types; print(sorted(n for n, v in vars(bulkdrive).items() "
        "if not n.startswith('_') and not isinstance(v, types.ModuleType)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _upload_requests(log: Path) -> list[dict[str, str]]:
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return [e for e in lines if e["path"].endswith("/file/action/upload")]


async def test_upload_tree_runs_as_the_clients_config_says_one_file_at_a_time(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """`connect(..., config=TransferConfig(transfers=1))`: one file at a time, so each upload
    session's requests follow each other in the server's log, never interleaved."""
    from bulkdrive import Credentials, EdgeDriveClient, Secret, TransferConfig, upload_tree

    log = tmp_path / "requests.ndjson"
    emulator = await make_emulator(request_log=log)
    source = tmp_path / "src"
    source.mkdir()
    for i in range(4):
        (source / f"f{i}.bin").write_bytes(os.urandom(200_000))
    config = TransferConfig(transfers=1, verify=False, chunk_size=64 * 1024)
    credentials = Credentials(USER, Secret(PASSWORD))
    async with EdgeDriveClient.connect(
        emulator.base_url, credentials, share_id=SHARE_ID, config=config
    ) as client:
        summary = await upload_tree(client, source, "\\one")
    assert summary.files.uploaded == 4
    assert assert_stored(source, emulator.config.root / SHARE_ID / "one") == 4
    sessions: list[str] = []
    for entry in _upload_requests(log):
        request_id = urllib.parse.parse_qs(entry["query"]).get("requestId", ["new"])[0]
        if request_id != "new" and (not sessions or sessions[-1] != request_id):
            assert request_id not in sessions, "two files were in flight at once"
            sessions.append(request_id)
    assert len(sessions) == 4


async def test_upload_tree_honours_the_clients_chunk_size_and_verify(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """`verify=False, chunk_size=1MiB` on the client: no request asks for the integrity
    check, and none carries more than 1 MiB."""
    from bulkdrive import Credentials, EdgeDriveClient, Secret, TransferConfig, upload_tree

    log = tmp_path / "requests.ndjson"
    emulator = await make_emulator(request_log=log)
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(3_000_000))
    config = TransferConfig(verify=False, chunk_size=1024 * 1024)
    credentials = Credentials(USER, Secret(PASSWORD))
    async with EdgeDriveClient.connect(
        emulator.base_url, credentials, share_id=SHARE_ID, config=config
    ) as client:
        summary = await upload_tree(client, source, "\\big")
    assert summary.files.uploaded == 1
    assert assert_stored(source, emulator.config.root / SHARE_ID / "big") == 1
    requests = _upload_requests(log)
    mib = 1024 * 1024
    assert [int(e["bytes"]) for e in requests] == [mib, mib, 3_000_000 - 2 * mib]
    assert not any("verifyBlockLevelFileIntegrity" in e["query"] for e in requests)


def test_the_emulator_does_not_import_the_uploader() -> None:
    code = (
        "import sys, bulkdrive.emulator; "
        "print(sorted(m for m in sys.modules if m in "
        "('bulkdrive.client', 'bulkdrive.upload', 'bulkdrive.scheduler', 'bulkdrive.journal')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

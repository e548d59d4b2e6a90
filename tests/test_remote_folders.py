"""Where a path relative to SRC lands on the server: the run keeps the last folder's remote
path, and that shortcut must map every path exactly as mapping it whole does. And how the
folders are created: at once up to the limit, each after its parent, a refused one failing
only its own subtree."""

from __future__ import annotations

import logging

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkdrive import errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, Secret
from bulkdrive.emulator.network import NetworkModel
from bulkdrive.names import QUOTE, InvalidNames, remote_name
from bulkdrive.progress import NullReporter
from bulkdrive.protocol import remote_child
from bulkdrive.remote_folders import RemoteFolders, RemotePaths, folder_creations, parts

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory

CREDENTIALS = Credentials(user=USER, password=Secret(PASSWORD))

# Names with the characters the escape mapping cares about: its quote, hex digits after it,
# undecodable bytes (lone surrogates), and the characters the server refuses.
NAME = st.text(
    alphabet=st.sampled_from(["a", QUOTE, "2", "F", "\udc80", "\udcff", ":", "é", " ", "\\"]),
    min_size=1,
    max_size=6,
).filter(lambda name: name not in (".", ".."))
PATH = st.lists(NAME, min_size=1, max_size=4).map("/".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(PATH, min_size=1, max_size=8), st.sampled_from(["\\", "\\dest", "\\a\\b"]))
def test_a_file_maps_as_its_whole_path_does(paths: list[str], root: str) -> None:
    remote = RemotePaths(root)
    for relative in paths:
        names = parts(remote_name(relative))
        assert remote.folder_of(relative) == remote_child(root, *names[:-1])
        assert remote.path_of(relative) == remote_child(root, *names)


def test_src_itself_is_the_remote_folder() -> None:
    assert RemotePaths("\\dest").path_of("") == "\\dest"
    assert RemotePaths("\\").path_of(".") == "\\"


@pytest.mark.anyio
async def test_folders_are_created_at_once_up_to_their_budget_each_after_its_parent(
    make_emulator: EmulatorFactory,
) -> None:
    # Every request takes 50 ms, so creations that may overlap do; the server answers 404 to
    # a folder whose parent is not there yet, and 400 to a name Windows refuses.
    emulator = await make_emulator(
        strict_parents=True, windows_names=True, network=NetworkModel(latency=0.05)
    )
    tops = [f"t{i}" for i in range(3)]
    found = [f for t in tops for f in (t, *(f"{t}/s{j}" for j in range(8)), f"{t}/s0/deep")]
    refused = ["t1/s3/bad:name", "t1/s3/bad:name/below"]
    messages: list[str] = []

    class Messages(NullReporter):
        def message(self, text: str, *, level: int = logging.INFO) -> None:
            messages.append(text)

    async with EdgeDriveClient.connect(emulator.base_url, CREDENTIALS, share_id=SHARE_ID) as c:
        folders = RemoteFolders(
            c,
            RemotePaths("\\"),
            invalid_names=InvalidNames.ESCAPE,
            reporter=Messages(),
            transfers=8,
            stop=lambda exc: None,
            stopping=lambda: False,
        )
        async with anyio.create_task_group() as tg:
            folders.start(tg)
            for relative in found[:15] + refused + found[15:]:
                folders.found(relative)
            folders.close()
            await folders.ensure_root(create=False)
            for relative in found:
                assert await folders.wait_for_folder_of(f"{relative}/file") is None
            errors_ = [await folders.wait_for_folder_of(f"{r}/file") for r in refused]
    assert folders.created == len(found)
    # A budget of their own, below --transfers: the uploads keep their connections.
    stats = folders.statistics()
    assert stats.limit == folder_creations(8) == 4 and stats.most_at_once == 4
    assert stats.creating == 0 and stats.queued == 0 and stats.created == len(found)
    assert stats.most_queued == len(found) + len(refused)  # all found before a creator ran
    # The first file asked for its folder before any creation could end, and waited for it.
    assert 1 <= stats.files_waited <= len(found)
    stored = emulator.config.root / SHARE_ID
    assert {p.relative_to(stored).as_posix() for p in stored.rglob("*")} == set(found)
    # The refused folder fails, and what is below it fails with it, without a request.
    assert all(isinstance(e, errors.FolderNotCreated) for e in errors_)
    assert [m for m in messages if "bad:name" in m] == [messages[0]] and len(messages) == 1


def test_files_of_many_folders_in_turns_map_as_their_paths_do() -> None:
    """The remote folders are kept for the last folders only: files asked for in turns, from
    more folders than are kept, still map as their whole paths do."""
    remote = RemotePaths("\\dest")
    relatives = [f"d{n % 150}/s{n % 7}/f{n}" for n in range(600)]
    for relative in relatives + relatives[::-1]:
        names = parts(remote_name(relative))
        assert remote.folder_of(relative) == remote_child("\\dest", *names[:-1])

"""Where a path relative to SRC lands on the server: the run keeps the last folder's remote
path, and that shortcut must map every path exactly as mapping it whole does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bulkdrive.names import QUOTE, remote_name
from bulkdrive.protocol import remote_child
from bulkdrive.remote_folders import RemotePaths, parts

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

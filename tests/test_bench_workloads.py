"""A built workload is reused only while it is still the workload's definition."""

from __future__ import annotations

from pathlib import Path

from bulkdrive.bench import workloads


def _built(tmp_path: Path) -> tuple[Path, Path]:
    root = workloads.build("sample", tmp_path / "sample")
    return root, root.with_name("sample.complete")


def test_a_tree_built_by_the_same_definition_is_reused(tmp_path: Path) -> None:
    root, marker = _built(tmp_path)
    assert marker.read_text() == workloads.fingerprint("sample")
    readme = root / "README.txt"
    readme.write_bytes(b"r" * readme.stat().st_size)  # a rebuild would write other bytes
    workloads.build("sample", root)
    assert readme.read_bytes() == b"r" * 600


def test_a_tree_of_an_older_definition_is_built_again(tmp_path: Path) -> None:
    root, marker = _built(tmp_path)
    marker.write_text("files=5000 bytes=20480000 seed=1 sha256=0\n")  # what an older one held
    (root / "d000").mkdir()
    (root / "d000" / "f00000.bin").write_bytes(b"x" * 4096)
    workloads.build("sample", root)
    assert not (root / "d000").exists()
    assert marker.read_text() == workloads.fingerprint("sample")
    sizes = {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }
    assert sizes == dict(workloads.sample_files())


def test_an_unfingerprinted_marker_is_checked_on_disk(tmp_path: Path) -> None:
    root, marker = _built(tmp_path)
    readme = root / "README.txt"
    readme.write_bytes(b"r" * 600)
    marker.write_text("")  # markers written before fingerprints were empty
    workloads.build("sample", root)
    assert readme.read_bytes() == b"r" * 600  # the same paths and sizes: kept
    assert marker.read_text() == workloads.fingerprint("sample")

    marker.write_text("")
    (root / "logs" / "day-00.log").unlink()  # no longer the definition: built again
    workloads.build("sample", root)
    assert (root / "logs" / "day-00.log").stat().st_size == 1024
    assert readme.read_bytes() != b"r" * 600

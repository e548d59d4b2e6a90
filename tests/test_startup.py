"""What `bulkdrive upload` loads and does outside the upload itself: every module it imports is
paid for by every run (a run of 20 000 small files takes ~6 s, of which ~0.5 s is start and
exit), so the parts a plain upload does not use stay out of it. Each test runs the real CLI in
a subprocess against an emulator on loopback and reads the process's own `sys.modules`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_cli_upload import cli_env, stored, upload_args

from bulkdrive.emulator import Emulator

pytestmark = pytest.mark.anyio

#: Imported only by the runs (or commands) that use them.
NOT_FOR_A_PLAIN_UPLOAD = (
    "bulkdrive.check",  # --check-remote, a resumed run's look at the server, `bulkdrive check`
    "bulkdrive.listing",
    "bulkdrive.tuner",  # --transfers auto
    "bulkdrive.cluster",  # --cluster
    "bulkdrive.cluster_engine",
    "bulkdrive.emulator",  # no --url, `bulkdrive serve`
    "bulkdrive.migration",  # shares, ls, journals
    "bulkdrive.check_command",
    "bulkdrive.status",
    "bulkdrive.bench",
    "dask",
    "distributed",
    "tomllib",  # a config file's run
    "xml.etree.ElementTree",  # an XML reply
    "rich.live",  # a terminal's live display
    "rich.progress_bar",
)

#: The CLI as `python -m bulkdrive` runs it, telling at its exit (after every other exit
#: hook: this one is registered first) which modules it had imported and whether the
#: collector's objects were frozen by then.
PROBE = """
import atexit, gc, json, runpy, sys
out = sys.argv.pop(1)
def tell():
    with open(out, "w") as fh:
        json.dump({"modules": sorted(sys.modules), "frozen": gc.get_freeze_count()}, fh)
atexit.register(tell)
runpy.run_module("bulkdrive", run_name="__main__", alter_sys=True)
"""


async def _run_probed(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    told = tmp_path / "told.json"
    done = await anyio.run_process(
        [sys.executable, "-c", PROBE, str(told), *args],
        cwd=tmp_path,
        env=cli_env(home=tmp_path),
        check=False,
    )
    return done.returncode, json.loads(told.read_text()), done.stderr.decode()


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_bytes(b"a small file\n" * 10)
    return source


async def test_a_plain_upload_imports_none_of_the_parts_it_does_not_use(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = _source(tmp_path)
    code, told, err = await _run_probed(
        tmp_path, *upload_args(emulator, source, "--transfers", "8", "--to", "\\plain")
    )
    assert code == 0, err
    assert (stored(emulator, "plain", "a.txt")).read_bytes() == (source / "a.txt").read_bytes()
    modules = set(told["modules"])
    assert "bulkdrive.scheduler" in modules  # the probe saw the run's own modules
    assert sorted(modules.intersection(NOT_FOR_A_PLAIN_UPLOAD)) == []
    # The last collections at exit are skipped (cli: atexit gc.freeze).
    assert told["frozen"]


async def test_the_runs_that_use_them_import_the_tuner_and_the_comparison(
    emulator: Emulator, tmp_path: Path
) -> None:
    """The other side of the test above: the probe does see a lazily imported module, and
    the runs that need one get it."""
    source = _source(tmp_path)
    code, told, err = await _run_probed(
        tmp_path,
        *upload_args(emulator, source, "--transfers", "auto", "--check-remote", "--to", "\\x"),
    )
    assert code == 0, err
    assert (stored(emulator, "x", "a.txt")).read_bytes() == (source / "a.txt").read_bytes()
    modules = set(told["modules"])
    assert {"bulkdrive.tuner", "bulkdrive.check"} <= modules


async def test_help_imports_neither_the_run_nor_aiohttp_nor_rich(tmp_path: Path) -> None:
    code, told, err = await _run_probed(tmp_path, "upload", "--help")
    assert code == 0, err
    modules = set(told["modules"])
    assert "bulkdrive.cli" in modules
    assert sorted(modules.intersection({"bulkdrive.job", "bulkdrive.client", "aiohttp"})) == []
    assert sorted(m for m in modules if m == "rich" or m.startswith("rich.")) == []

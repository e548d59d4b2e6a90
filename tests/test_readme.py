"""The README stands on its own: its Python example runs as written, its links stay inside the
repository, and its option table names every option of `bulkdrive upload`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import anyio
import click
import pytest

from bulkdrive.cli import upload
from bulkdrive.emulator import Emulator

from conftest import PASSWORD, SHARE_ID, USER

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def python_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### From Python") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no Python example under 'From Python'"
    return match.group(1)


@pytest.mark.anyio
async def test_the_python_example_runs_as_written(emulator: Emulator, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(python_example(), encoding="utf-8")
    env = {
        "BULKDRIVE_URL": emulator.base_url,
        "BULKDRIVE_USER": USER,
        "BULKDRIVE_PASSWORD": PASSWORD,
        "BULKDRIVE_SHARE": SHARE_ID,
        "PATH": "/usr/bin:/bin",
    }
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, str(script)], cwd=tmp_path, env=env, check=False
        )
    assert done.returncode == 0, done.stderr.decode()
    share = emulator.config.root / SHARE_ID
    assert (share / "reports" / "report.txt").read_bytes() == b"all fine\n"
    assert (share / "pictures" / "2024" / "tulip.txt").read_bytes() == b"hello\n"
    assert "1 uploaded, 0 failed" in done.stdout.decode()


def test_links_stay_inside_the_repository() -> None:
    for page in (README, *sorted((REPO / "docs").glob("*.md"))):
        text = page.read_text(encoding="utf-8")
        assert "../shared" not in text, page
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).resolve().is_relative_to(REPO), (page, target)
            assert (page.parent / target).exists(), (page, target)
    assert (REPO / "docs" / "edge-drive-api.md").is_file()


def test_the_option_table_names_every_upload_option() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("### Options") : text.index("### From Python")]
    for param in upload.params:
        if isinstance(param, click.Option):
            names = [*param.opts, *param.secondary_opts]
            assert any(f"`{name}" in table for name in names), names
    for variable in ("BULKDRIVE_STATE_DIR", "BULKDRIVE_LOOP", "BULKDRIVE_PASSWORD"):
        assert variable in table

"""What people see, through the real `bulkdrive upload` in a subprocess: the live display in a
pseudo-terminal, plain stat lines in a pipe, the summary, both reports, one-line errors with
their exit codes, and no secret anywhere in what a run writes."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import ssl
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.streams.tls import TLSListener
from test_cli_upload import cli_env, run_cli, stored

from bulkdrive.emulator import Emulator
from bulkdrive.report import format_bytes

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory
from trees import assert_stored, make_tree

pytestmark = pytest.mark.anyio

BAD_NAME = "bad\\name.txt"  # a backslash is a path separator for Edge Drive: fails, no request
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HIDE_CURSOR, SHOW_CURSOR = b"\x1b[?25l", b"\x1b[?25h"
# Rich reads these to force or forbid a terminal; the tests choose for themselves.
TERMINAL_OVERRIDES = (
    "FORCE_COLOR",
    "NO_COLOR",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "COLUMNS",
    "LINES",
)


@dataclass(frozen=True)
class Tree:
    files: dict[str, int]  # relative path with "/" -> size

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def size(self) -> int:
        return sum(self.files.values())


def tree_of(root: Path) -> Tree:
    files = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            files[path.relative_to(root).as_posix()] = path.stat().st_size
    return Tree(files)


def env_for(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """`cli_env` without the variables that force or forbid a terminal, then `extra`."""
    env = cli_env(home=home)
    for name in TERMINAL_OVERRIDES:
        env.pop(name, None)
    env.update(extra or {})
    return env


def target(emulator: Emulator, share: str = SHARE_ID) -> list[str]:
    return ["--url", emulator.base_url, "--user", USER, "--share", share]


def text(done: subprocess.CompletedProcess[bytes]) -> tuple[str, str]:
    return done.stdout.decode(), done.stderr.decode()


# --- the summary table ------------------------------------------------------------------------

SUMMARY_ROW = re.compile(r"^(uploaded|resumed|skipped|failed|total)\s*│\s*([\d,]+)\s*│\s*(.+?)\s*$")


def summary_rows(out: str) -> dict[str, tuple[int, str]]:
    """{"uploaded": (files, "1.2 MiB"), ...} from the table after "upload finished"."""
    assert "upload finished" in out, out
    rows = {}
    for line in out[out.rindex("upload finished") :].splitlines():
        match = SUMMARY_ROW.match(line)
        if match:
            rows[match[1]] = (int(match[2].replace(",", "")), match[3])
    assert set(rows) == {"uploaded", "resumed", "skipped", "failed", "total"}, out
    return rows


def expect_rows(
    tree: Tree,
    *,
    uploaded: Collection[str] = (),
    skipped: Collection[str] = (),
    failed: Collection[str] = (),
) -> dict[str, tuple[int, str]]:
    """The summary rows for a run of `tree` with these outcomes."""

    def row(names: Collection[str]) -> tuple[int, str]:
        return len(names), format_bytes(sum(tree.files[n] for n in names))

    return {
        "uploaded": row(uploaded),
        "resumed": (0, "0 B"),
        "skipped": row(skipped),
        "failed": row(failed),
        "total": (tree.count, format_bytes(tree.size)),
    }


# --- a pseudo-terminal ------------------------------------------------------------------------


def run_in_pty(
    args: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float
) -> tuple[int, bytes]:
    """Run `args` with stdin/stdout/stderr on a 120x40 pty; return the exit code and every byte
    written. Blocking: call it from a worker thread so the emulator's event loop keeps serving."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        process = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    finally:
        os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every writer closed the slave side
                break
            if not data:
                break
            output += data
        else:
            raise AssertionError(f"no end within {timeout}s; output so far: {bytes(output)!r}")
        return process.wait(timeout=10), bytes(output)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


async def test_live_progress_on_a_terminal(make_emulator: EmulatorFactory, tmp_path: Path) -> None:
    # a few slow requests keep the run on screen for a few redraws
    emulator = await make_emulator(fault_rate=0.1, faults=("delay",), fault_delay_seconds=0.3)
    source = make_tree(tmp_path / "src", small_files=300, large=(8 << 20, 8 << 20))
    tree = tree_of(source)
    env = env_for(tmp_path, {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"})
    args = [sys.executable, "-m", "bulkdrive", "upload", str(source), *target(emulator)]
    code, raw = await anyio.to_thread.run_sync(
        lambda: run_in_pty(args, cwd=tmp_path, env=env, timeout=60)
    )
    screen = raw.decode("utf-8", "replace")
    assert code == 0, screen
    assert_stored(source, stored(emulator))

    # a live display: styled, redrawn in place, the cursor hidden while it runs
    assert b"\x1b[" in raw and HIDE_CURSOR in raw
    frames = ANSI.sub("", screen).split("uploading ")[1:]
    assert len(frames) >= 2, screen
    assert "(still counting)" in frames[0]  # the first frame comes before the walk is done
    live = "".join(frames)
    assert re.search(r"\d+(\.\d)? (B|KiB|MiB)/s  ETA ", live), live  # a rate and an ETA
    assert re.search(r"files \d+/\d+\+?: \d+ uploaded, 0 resumed, 0 skipped, 0 failed", live)
    assert re.search(r"retries \d+  resumes \d+  in flight [1-8]\b", live)
    assert re.search(r"many/d\d\d/f\d{4}\.bin .* / \d+ B", live)  # a transfer with its bar
    last = frames[-1][: frames[-1].index("upload finished")]
    assert f"files {tree.count}/{tree.count}: {tree.count} uploaded" in last, last
    assert f"{format_bytes(tree.size)} / {format_bytes(tree.size)}" in last
    assert "still counting" not in last

    # a clean end: the cursor is back, then the summary below the (erased) live display
    assert raw.rindex(SHOW_CURSOR) > raw.rindex(HIDE_CURSOR)
    assert raw.index(b"upload finished") > raw.rindex(SHOW_CURSOR)
    end = ANSI.sub("", screen[screen.rindex("upload finished") :]).replace("\r", "")
    assert summary_rows(end) == expect_rows(tree, uploaded=set(tree.files))
    assert "Traceback" not in screen


async def test_total_is_final_once_it_stops_counting(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(fault_rate=1.0, faults=("delay",), fault_delay_seconds=0.05)
    source = make_tree(tmp_path / "src", small_files=100)
    tree = tree_of(source)
    done = await run_cli(
        "upload",
        str(source),
        *target(emulator),
        "--stats-interval",
        "0.2",
        cwd=tmp_path,
        env=env_for(tmp_path),
        timeout=60,
    )
    out, _ = text(done)
    assert done.returncode == 0, out
    stats = [line for line in out.splitlines() if "; ETA " in line]
    assert len(stats) >= 2, out
    for line in stats:
        match = re.search(r"files \d+ of ([\d,]+)(\+?)", line)
        assert match, line
        if "still counting" not in line:
            assert int(match[1].replace(",", "")) == tree.count, line


STAT_LINE = re.compile(
    r"^(?P<done>\S+ \S+) of (?P<total>\S+ \S+)( \(\d+%\))?(?P<counting>, total still counting)?; "
    r"(?P<rate>\S+ \S+/s|rate -); ETA \S+; "
    r"files (?P<finished>[\d,]+) of (?P<files>[\d,]+)\+? \((?P<uploaded>[\d,]+) uploaded, "
    r"(?P<resumed>[\d,]+) resumed, (?P<skipped>[\d,]+) skipped, (?P<failed>[\d,]+) failed\); "
    r"(?P<flight>\d+) in flight; retries [\d,]+; resumes [\d,]+; elapsed \S+$"
)


async def test_plain_stat_lines_off_a_terminal(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(fault_rate=1.0, faults=("delay",), fault_delay_seconds=0.1)
    source = make_tree(tmp_path / "src", small_files=50)
    tree = tree_of(source)
    done = await run_cli(
        "upload",
        str(source),
        *target(emulator),
        "--transfers",
        "4",
        "--stats-interval",
        "0.2",
        cwd=tmp_path,
        env=env_for(tmp_path),
        timeout=60,
    )
    out, err = text(done)
    assert done.returncode == 0, out + err
    for stream in (out, err):
        bad = {c for c in stream if (c < " " and c != "\n") or "\x7f" <= c <= "\x9f"}
        assert not bad, f"control characters {bad!r} in {stream!r}"

    lines = out.splitlines()
    stats = [(i, STAT_LINE.match(line)) for i, line in enumerate(lines) if "; ETA " in line]
    assert all(match for _, match in stats), "\n".join(lines)
    assert len(stats) >= 3, out  # a few on the beat, one at the end
    finished = [int(m["finished"].replace(",", "")) for _, m in stats if m]
    assert finished == sorted(finished)
    assert finished[0] < tree.count  # lines while the run goes, not only at the end

    # the last line comes just before the summary and has the final figures
    index, final = stats[-1]
    assert final is not None
    assert lines[index + 1] == "upload finished"
    assert final["done"] == final["total"] == format_bytes(tree.size)
    assert final["counting"] is None
    assert (final["finished"], final["files"], final["uploaded"]) == (str(tree.count),) * 3
    assert (final["skipped"], final["failed"], final["flight"]) == ("0", "0", "0")
    assert summary_rows(out) == expect_rows(tree, uploaded=set(tree.files))


async def test_summary_and_reports_match_the_tree(emulator: Emulator, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", small_files=40, large=(5 << 20,))
    (source / BAD_NAME).write_bytes(b"x" * 7)
    tree = tree_of(source)
    good = set(tree.files) - {BAD_NAME}
    env = env_for(tmp_path)

    async def upload(run: int) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
        report, files = tmp_path / f"run{run}.json", tmp_path / f"run{run}.ndjson"
        done = await run_cli(
            "upload",
            str(source),
            *target(emulator),
            "--no-progress",
            "--report",
            str(report),
            "--report-files",
            str(files),
            cwd=tmp_path,
            env=env,
        )
        out, err = text(done)
        assert done.returncode == 1, out + err  # some files failed
        assert "Traceback" not in out + err
        lines = [json.loads(line) for line in files.read_text(encoding="ascii").splitlines()]
        return out, json.loads(report.read_text(encoding="utf-8")), lines

    # first run: every good file uploaded, the bad name failed with its reason and what to do
    out, report, lines = await upload(1)
    assert summary_rows(out) == expect_rows(tree, uploaded=good, failed={BAD_NAME})
    failed_lines = [line for line in out.splitlines() if line.startswith("FAILED ")]
    assert failed_lines and all(line.startswith(f"FAILED {BAD_NAME}: ") for line in failed_lines)
    assert "(Rejected); " in failed_lines[-1]
    assert out.index("failed files (1):") > out.index("upload finished")
    assert_stored(source, stored(emulator), ignore={BAD_NAME})

    assert report["files"] == {
        "uploaded": len(good),
        "resumed": 0,
        "skipped": 0,
        "failed": 1,
        "total": tree.count,
    }
    good_bytes = tree.size - 7
    assert report["bytes"] == {
        "uploaded": good_bytes,
        "resumed": 0,
        "skipped": 0,
        "failed": 7,
        "total": tree.size,
        "sent": good_bytes,
    }
    assert isinstance(report["elapsed_seconds"], float) and report["elapsed_seconds"] > 0
    assert report["exit_code"] == 1 and report["run_error"] is None
    assert report["walk_complete"] is True and report["interrupted"] is False
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "run1.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    (failure,) = report["failures"]
    assert failure["path"] == BAD_NAME and failure["size"] == 7
    assert failure["exit_class"] == "Rejected" and failure["reason"] and failure["hint"]

    by_path = {line["path"]: line for line in lines}
    assert len(lines) == len(by_path) == tree.count and set(by_path) == set(tree.files)
    guids = set()
    for path, line in by_path.items():
        assert line["size"] == tree.files[path]
        assert line["remote_path"] == "\\" + path.replace("/", "\\")
        assert set(line) >= {"outcome", "file_guid", "attempts", "seconds", "reason", "exit_class"}
        if path == BAD_NAME:
            assert line["outcome"] == "failed" and line["file_guid"] is None
            assert line["exit_class"] == "Rejected" and line["reason"]
        else:
            assert line["outcome"] == "uploaded" and line["reason"] is None, line
            assert isinstance(line["file_guid"], str) and line["file_guid"], line
            assert isinstance(line["attempts"], int) and line["attempts"] >= 1
            guids.add(line["file_guid"])
    assert len(guids) == len(good)

    # second run: the journal skips what is done; the bad name fails again
    out, report, lines = await upload(2)
    assert summary_rows(out) == expect_rows(tree, skipped=good, failed={BAD_NAME})
    assert report["files"] == {
        "uploaded": 0,
        "resumed": 0,
        "skipped": len(good),
        "failed": 1,
        "total": tree.count,
    }
    assert report["bytes"] == {
        "uploaded": 0,
        "resumed": 0,
        "skipped": good_bytes,
        "failed": 7,
        "total": tree.size,
        "sent": 0,
    }
    outcomes = {line["path"]: line["outcome"] for line in lines}
    assert outcomes == {path: "failed" if path == BAD_NAME else "skipped" for path in tree.files}
    assert all(line["file_guid"] is None and line["reason"] for line in lines)


# --- errors a user can cause --------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # what is wrong, what to do (lower case)
    env: tuple[tuple[str, str], ...] = ()


def one_error_line(done: subprocess.CompletedProcess[bytes]) -> str:
    err = done.stderr.decode()
    assert "Traceback" not in err + done.stdout.decode()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bulkdrive: error: "), err
    return lines[0].lower()


def self_signed_tls(tmp_path: Path) -> ssl.SSLContext:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_each_user_error_is_one_line_with_its_exit_code(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f.txt").write_bytes(b"hello")
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text('transfers = "lots"\n', encoding="utf-8")
    # a port nobody listens on: bind one, then close it
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    closed_port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    http_port = emulator.base_url.split(":")[2].split("/")[0]
    ok = (str(source), *target(emulator))
    cases = [
        Case("bad flag", (*ok, "--transfers", "0"), 2, ("--transfers", "at least 1")),
        Case("bad config", (str(source), "--config", str(bad_config)), 2, ("transfers", "lots")),
        Case(
            "bad setting",
            ok,
            2,
            ("--chunk-size", "--no-verify"),
            env=(("BULKDRIVE_CHUNK_SIZE", "3MiB"),),
        ),
        Case("missing source", (str(tmp_path / "nope"), *ok[1:]), 2, ("not found", "nope")),
        Case(
            "unreachable",
            (
                str(source),
                "--url",
                f"http://127.0.0.1:{closed_port}/webconsole/api",
                "--user",
                USER,
                "--share",
                SHARE_ID,
                "--connect-timeout",
                "2",  # the login is retried for this long
            ),
            5,
            ("cannot connect", "check --url"),
        ),
        Case(
            "wrong password",
            ok,
            3,
            ("refused", "password"),
            env=(("BULKDRIVE_PASSWORD", "not-the-password"),),
        ),
        Case(
            "view-only share", (str(source), *target(emulator, "2")), 3, ("view-only", "permission")
        ),
        Case(
            "unknown share",
            (str(source), *target(emulator, "99")),
            3,
            ("share 99", "check --share"),
        ),
        Case(
            "https to http",
            (
                str(source),
                "--url",
                f"https://127.0.0.1:{http_port}/webconsole/api",
                "--user",
                USER,
                "--share",
                SHARE_ID,
            ),
            5,
            ("ssl", "check --url"),
        ),
        Case(
            "no user",
            (str(source), "--url", emulator.base_url, "--share", SHARE_ID),
            2,
            ("no user", "--user"),
        ),
        Case("bad remote folder", (*ok, "--to", "\\a\\..\\b"), 2, ("--to", "..")),
        Case(
            "report is a folder",
            (*ok, "--report", str(tmp_path)),
            2,
            ("--report", "is a directory"),
        ),
        Case(
            "report folder missing",
            (*ok, "--report-files", str(tmp_path / "no" / "f.ndjson")),
            2,
            ("--report-files", "no such file"),
        ),
    ]
    limiter = anyio.CapacityLimiter(3)
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def attempt(case: Case) -> None:
        async with limiter:
            results[case.name] = await run_cli(
                "upload",
                *case.args,
                "--no-progress",
                cwd=tmp_path,
                env=env_for(tmp_path, dict(case.env)),
                timeout=30,
            )

    async with anyio.create_task_group() as tg:
        for case in cases:
            tg.start_soon(attempt, case)
    for case in cases:
        done = results[case.name]
        assert done.returncode == case.code, (case.name, done.stderr.decode())
        line = one_error_line(done)
        for words in case.says:
            assert words in line, (case.name, line)

    # click's own usage error: exit 2, no traceback
    unknown = await run_cli("upload", *ok, "--no-such-flag", cwd=tmp_path, env=env_for(tmp_path))
    assert unknown.returncode == 2 and b"--no-such-flag" in unknown.stderr
    assert b"Traceback" not in unknown.stderr

    # nothing was stored by any of them
    assert not stored(emulator, "f.txt").exists()


async def test_untrusted_certificate_is_one_line(tmp_path: Path) -> None:
    context = self_signed_tls(tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    (source / "f.txt").write_bytes(b"hello")

    async def handshake_only(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            with anyio.move_on_after(10):
                await stream.receive()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    tls = TLSListener(listener, context, standard_compatible=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tls.serve, handshake_only)
        done = await run_cli(
            "upload",
            str(source),
            "--url",
            f"https://127.0.0.1:{port}/webconsole/api",
            "--user",
            USER,
            "--share",
            SHARE_ID,
            "--no-progress",
            cwd=tmp_path,
            env=env_for(tmp_path),
            timeout=30,
        )
        tg.cancel_scope.cancel()
    assert done.returncode == 5, done.stderr.decode()
    line = one_error_line(done)
    assert "certificate" in line and "--ca-bundle" in line and "--insecure" in line


# --- how much is shown ------------------------------------------------------------------------


FILE_LINE = re.compile(r"^(uploaded|resumed|skipped) .+ \(.+ in .+\)$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


async def test_quiet_verbose_and_no_progress(emulator: Emulator, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", small_files=30)
    env = env_for(tmp_path)

    async def upload(*flags: str) -> tuple[int, str, str]:
        done = await run_cli(
            "upload", str(source), *target(emulator), *flags, cwd=tmp_path, env=env
        )
        out, err = text(done)
        assert "Traceback" not in out + err
        return done.returncode, out, err

    # -q: a clean run says nothing at all
    assert await upload("-q", "--to", "\\quiet") == (0, "", "")

    (source / BAD_NAME).write_bytes(b"x")
    tree = tree_of(source)
    good = sorted(set(tree.files) - {BAD_NAME})

    # -q: errors only, one line per failed file
    code, out, err = await upload("-q", "--to", "\\quiet")
    assert code == 1 and err == ""
    (line,) = out.splitlines()
    assert line.startswith(f"FAILED {BAD_NAME}: ") and "(Rejected); " in line

    # -v: a line per file (off a terminal each starts with its ISO-8601 UTC time);
    # --no-progress: no stat lines, the summary still
    code, out, err = await upload("-v", "--no-progress", "--to", "\\verbose")
    assert code == 1, out + err
    assert any(STAMP.match(line) for line in out.splitlines())
    lines = [STAMP.sub("", line) for line in out.splitlines()]
    for path in good:
        assert sum(line.startswith(f"uploaded {path} (") for line in lines) == 1, (path, out)
    assert sum(line.startswith(f"FAILED {BAD_NAME}: ") for line in lines) == 2  # live, summary
    assert "; ETA " not in out
    assert summary_rows(out) == expect_rows(tree, uploaded=set(good), failed={BAD_NAME})

    code, out, err = await upload("-v", "--no-progress", "--to", "\\verbose")
    lines = [STAMP.sub("", line) for line in out.splitlines()]
    for path in good:
        assert f"skipped {path}: unchanged since the last run (journal)" in lines, (path, out)

    # without -v, the files that went well are not listed one by one
    code, out, err = await upload("--no-progress", "--to", "\\plain")
    assert code == 1 and not any(FILE_LINE.match(line) for line in out.splitlines()), out

    # --no-progress on a terminal: no live display, the summary still
    args = [
        sys.executable,
        "-m",
        "bulkdrive",
        "upload",
        str(source),
        *target(emulator),
        "--no-progress",
        "--to",
        "\\tty",
    ]
    tty_env = {**env, "TERM": "xterm-256color", "COLUMNS": "120"}
    code, raw = await anyio.to_thread.run_sync(
        lambda: run_in_pty(args, cwd=tmp_path, env=tty_env, timeout=60)
    )
    assert code == 1 and HIDE_CURSOR not in raw and b"upload finished" in raw
    assert b"ETA " not in raw


# --- secrets ----------------------------------------------------------------------------------


async def login_token(emulator: Emulator) -> str:
    """A token from the emulator's Login, as a user would get one for BULKDRIVE_TOKEN."""
    body = {"username": USER, "password": base64.b64encode(PASSWORD.encode()).decode()}
    with anyio.fail_after(10):
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{emulator.base_url}/Login", json=body, headers={"Accept": "application/json"}
            ) as response,
        ):
            reply = await response.text()
    match = re.search(r"QSDK [0-9a-fA-F]{32,}", reply)
    assert response.status == 200 and match, reply
    return match[0]


async def test_no_secret_in_anything_written(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # retries and a failed file put error messages in every output, not only the happy path
    emulator = await make_emulator(fault_rate=0.3, faults=("500",))
    source = make_tree(tmp_path / "src", small_files=3)
    (source / BAD_NAME).write_bytes(b"x")
    token = await login_token(emulator)
    secrets = {
        "password": PASSWORD.encode(),
        "base64 password": base64.b64encode(PASSWORD.encode()),
        "token": token.split()[1][:24].encode(),
    }

    async def upload(name: str, extra_env: dict[str, str]) -> None:
        out_dir = tmp_path / name
        out_dir.mkdir()
        env = env_for(out_dir, extra_env)
        done = await run_cli(
            "upload",
            str(source),
            *target(emulator),
            "--to",
            f"\\{name}",
            "-vv",
            "--log-file",
            str(out_dir / "run.log"),
            "--report",
            str(out_dir / "report.json"),
            "--report-files",
            str(out_dir / "files.ndjson"),
            cwd=out_dir,
            env=env,
        )
        assert done.returncode == 1, done.stderr.decode()  # the bad name
        assert b"POST" in done.stdout  # -vv shows protocol detail: there was detail to leak
        shown.append(done.stdout)
        written = {"stdout": done.stdout, "stderr": done.stderr}
        for path in out_dir.rglob("*"):  # log, reports, journal (+ -wal/-shm) in state/
            if path.is_file():
                written[str(path.relative_to(out_dir))] = path.read_bytes()
        assert any(name.startswith("state") for name in written), written.keys()
        assert {"run.log", "report.json", "files.ndjson"} <= set(written)
        assert b" uploaded " in written["run.log"] and b"POST " in written["run.log"]
        for where, data in written.items():
            for what, secret in secrets.items():
                assert secret not in data, f"the {what} appears in {where}"

    shown: list[bytes] = []
    await upload("with-password", {"BULKDRIVE_PASSWORD": PASSWORD})
    await upload("with-token", {"BULKDRIVE_TOKEN": token, "BULKDRIVE_PASSWORD": ""})
    assert b"retrying" in b"".join(shown)  # error messages went through the outputs too

    # a refused password is not repeated in the error either
    wrong = "Wr0ng-but-Secret"
    done = await run_cli(
        "upload",
        str(source),
        *target(emulator),
        "-vv",
        cwd=tmp_path,
        env=env_for(tmp_path, {"BULKDRIVE_PASSWORD": wrong}),
    )
    assert done.returncode == 3
    for data in (done.stdout, done.stderr):
        assert wrong.encode() not in data
        assert base64.b64encode(wrong.encode()) not in data

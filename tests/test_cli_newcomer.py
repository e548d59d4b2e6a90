"""What a newcomer and a cron job hit (issue 17): errors that name the real cause, defaults
that cannot surprise, a report on every exit, logs a machine can read. Each test runs the real
CLI in a subprocess against an emulator on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from test_cli_upload import cli_env, run_cli, stored, upload_args

from bulkdrive import errors
from bulkdrive.emulator import Emulator, running_emulator

from conftest import SHARE_ID, USER, EmulatorFactory, emulator_config

pytestmark = pytest.mark.anyio

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def only_line(done: subprocess.CompletedProcess[bytes]) -> str:
    """The one stderr line of a run that stopped; nothing of it on stdout."""
    err = done.stderr.decode()
    assert "Traceback" not in err + done.stdout.decode()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bulkdrive: error: "), err
    return lines[0]


def one_file(tmp_path: Path, data: bytes = b"hello") -> Path:
    source = tmp_path / "src"
    source.mkdir(parents=True, exist_ok=True)
    (source / "f.txt").write_bytes(data)
    return source


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- errors that name the real cause ------------------------------------------------------------


HTML_PAGE = """<!DOCTYPE HTML>
<html lang="en">
    <head>
        <meta charset="utf-8">
        <title>Error response</title>
    </head>
    <body>
        <h1>Error response</h1>
        <p>Error code: 501</p>
        <p>Message: Unsupported method ('POST').</p>
        <p>Error code explanation: 501 - Server does not support this operation.</p>
    </body>
</html>
"""


async def test_a_url_that_is_not_edge_drive_is_named_so(emulator: Emulator, tmp_path: Path) -> None:
    """A plain web server (what `python3 -m http.server` answers), and the emulator's root
    without /webconsole/api: a usage error about --url, not a wrong password."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(status=501, text=HTML_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        source = one_file(tmp_path)
        root_only = emulator.base_url.removesuffix("/webconsole/api")
        for url in (f"http://127.0.0.1:{port}/", root_only):
            done = await run_cli(
                "upload", str(source), "--url", url, "--user", USER, "--share", SHARE_ID,
                "--no-progress", "--report", str(tmp_path / "r.json"), cwd=tmp_path,
            )  # fmt: skip
            assert done.returncode == 2, done.stderr.decode()
            line = only_line(done)
            assert "not an Edge Drive web-service root" in line
            assert "/webconsole/api" in line and "--url" in line
            assert "password" not in line.lower()
            assert "<html" not in line.lower() and len(line) < 500
            report = json.loads((tmp_path / "r.json").read_text())
            assert report["exit_code"] == 2
            assert report["run_error"]["exit_class"] == "NotEdgeDrive"
    finally:
        await runner.cleanup()


async def test_connection_failures_have_their_own_code_and_the_login_is_retried(
    tmp_path: Path,
) -> None:
    source = one_file(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/webconsole/api"
    nothing = await run_cli(
        "upload", str(source), "--url", url, "--user", USER, "--share", SHARE_ID,
        "--connect-timeout", "1", "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert nothing.returncode == errors.EXIT_UNREACHABLE == 5
    line = only_line(nothing)
    assert "cannot" in line and "--url" in line

    # The server comes up while bulkdrive is retrying its login: the upload goes through.
    argv = [sys.executable, "-m", "bulkdrive", "upload", str(source), "--url", url]
    argv += ["--user", USER, "--share", SHARE_ID, "--connect-timeout", "30", "--no-progress"]
    async with await anyio.open_process(argv, cwd=tmp_path, env=cli_env(home=tmp_path)) as proc:
        await anyio.sleep(3)  # longer than the old three quick tries lasted
        config = emulator_config(tmp_path / "server", port=port)
        async with running_emulator(config) as emulator:
            with anyio.fail_after(60):
                code = await proc.wait()
            assert code == 0
            assert stored(emulator, "f.txt").read_bytes() == b"hello"


async def test_a_request_over_the_servers_limit_is_not_a_quota(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(max_chunk_bytes=1024 * 1024)
    source = one_file(tmp_path)
    (source / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    done = await run_cli(
        *upload_args(emulator, source, "--chunk-size", "2MiB", "--no-verify"), cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr.decode()
    line = only_line(done)
    assert "--chunk-size" in line and "larger than the server accepts" in line
    assert "quota" not in line.lower()
    everything = done.stdout.decode() + done.stderr.decode()
    assert everything.count("larger than the largest accepted request") == 1  # told once
    assert "QuotaExceeded" not in everything and "RequestTooLarge" not in done.stdout.decode()

    full = await make_emulator(root=tmp_path / "full", quota=1024 * 1024)
    quota = await run_cli(*upload_args(full, source), cwd=tmp_path)
    assert quota.returncode == 4, quota.stderr.decode()
    line = only_line(quota)
    assert "quota" in line.lower() and "--chunk-size" not in line


async def test_unknown_or_view_only_share_is_the_first_and_only_word(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = one_file(tmp_path)
    for share, words in (("99", "share 99"), ("2", "view-only")):
        done = await run_cli(
            *upload_args(emulator, source, "--report", str(tmp_path / "r.json"), share=share),
            cwd=tmp_path,
        )
        assert done.returncode == 3, done.stderr.decode()
        assert words in only_line(done)
        assert done.stdout.decode() == ""  # no table of zeros, no class name
        assert json.loads((tmp_path / "r.json").read_text())["exit_code"] == 3
    assert emulator.statistics().initiates == 0  # checked before the walk, nothing sent


async def test_empty_password_file_and_too_many_transfers(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = one_file(tmp_path)
    empty = tmp_path / "password"
    empty.write_text("")
    env = cli_env(home=tmp_path)
    del env["BULKDRIVE_PASSWORD"]
    done = await run_cli(
        *upload_args(emulator, source, "--password-file", str(empty)), cwd=tmp_path, env=env
    )
    assert done.returncode == 2
    line = only_line(done)
    assert "--password-file" in line and "empty" in line
    assert emulator.statistics().logins == 0

    many = await run_cli(*upload_args(emulator, source, "--transfers", "5000"), cwd=tmp_path)
    assert many.returncode == 2
    assert "--transfers" in only_line(many) and "1024" in only_line(many)


# --- defaults that cannot surprise a cron job ---------------------------------------------------


async def test_a_target_without_url_is_a_usage_error(tmp_path: Path) -> None:
    source = one_file(tmp_path)
    env = cli_env(home=tmp_path)
    config = tmp_path / "c.toml"
    config.write_text('user = "alice"\n')
    cases: list[tuple[list[str], dict[str, str]]] = [
        (["--user", "alice", "--share", "1", "--to", "\\backup"], {}),
        (["--share", "1"], {}),
        ([], {"BULKDRIVE_USER": "alice"}),
        (["--config", str(config)], {}),
    ]
    for args, extra in cases:
        done = await run_cli(
            "upload", str(source), "--no-progress", *args, cwd=tmp_path, env={**env, **extra}
        )
        assert done.returncode == 2, (args, extra, done.stderr.decode())
        line = only_line(done)
        assert "--url" in line, line
        assert not (tmp_path / "bulkdrive-data").exists()  # no emulator was started


async def test_make_demo_twice_with_two_sources(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("needs make")
    repo = Path(__file__).resolve().parent.parent
    venv_bin = Path(sys.executable).parent
    stamp = venv_bin.parent / ".installed"
    if not stamp.exists():
        pytest.skip("the Makefile's venv is not this one")
    mine = one_file(tmp_path / "mine", b"my own file")
    # run in tmp_path (demo-data lands there), with this venv, taken as installed (-o)
    base = ["make", "-s", "-f", str(repo / "Makefile"), f"BIN={venv_bin}", f"STAMP={stamp}"]
    base += ["-o", str(stamp)]
    env = cli_env(home=tmp_path)
    del env["BULKDRIVE_STATE_DIR"]
    with anyio.fail_after(120):
        first = await anyio.run_process([*base, "demo"], cwd=tmp_path, env=env, check=False)
        second = await anyio.run_process(
            [*base, "demo", f"SRC={mine}"], cwd=tmp_path, env=env, check=False
        )
    assert first.returncode == 0, first.stderr.decode()
    assert second.returncode == 0, second.stderr.decode()
    share = tmp_path / "demo-data" / "emulator" / "1"
    assert (share / "f.txt").read_bytes() == b"my own file"
    assert (share / "README.txt").is_file()
    assert len(list((tmp_path / "demo-data" / "state" / "journals").glob("*.sqlite"))) == 2


# --- a report on every exit ---------------------------------------------------------------------


async def test_the_report_is_rewritten_on_every_exit(emulator: Emulator, tmp_path: Path) -> None:
    source = one_file(tmp_path)
    report = tmp_path / "report.json"
    log = tmp_path / "run.log"
    ok = await run_cli(
        *upload_args(emulator, source, "--report", str(report), "--log-file", str(log)),
        cwd=tmp_path,
    )
    assert ok.returncode == 0
    assert json.loads(report.read_text())["exit_code"] == 0
    last = log.read_text().splitlines()[-1]
    assert "summary: upload finished" in last and "exit code 0" in last

    cases: list[tuple[list[str], dict[str, str], int]] = [
        ([], {"BULKDRIVE_PASSWORD": "wrong"}, 3),  # login refused
        (["--transfers", "0"], {}, 2),  # bad flag
        (["--share", "99"], {}, 3),  # unknown share
    ]
    for args, extra, code in cases:
        done = await run_cli(
            *upload_args(emulator, source, "--report", str(report), "--log-file", str(log)),
            *args,
            cwd=tmp_path,
            env=cli_env(extra, home=tmp_path),
        )
        assert done.returncode == code, (args, done.stderr.decode())
        data = json.loads(report.read_text())
        assert data["exit_code"] == done.returncode, args
        assert data["run_error"] is not None
    # the last run (unknown share) reached the log: it ends with its summary
    last = log.read_text().splitlines()[-1]
    assert "summary: upload stopped" in last and "exit code 3" in last


async def test_interrupted_after_a_quota_error_report_and_process_agree(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(
        quota=6 * 1024 * 1024, fault_rate=1.0, faults=("delay",), fault_delay_seconds=2.0
    )
    source = tmp_path / "src"
    source.mkdir()
    (source / "a-big.bin").write_bytes(os.urandom(8 * 1024 * 1024))  # over the quota: 413
    # two requests of 2 s each: still in flight when the 413 of the other file comes back
    (source / "b-slow.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "bulkdrive"]
    argv += upload_args(emulator, source, "--report", str(report), "--transfers", "2")
    async with await anyio.open_process(argv, cwd=tmp_path, env=cli_env(home=tmp_path)) as proc:
        with anyio.fail_after(30):
            while not any(r.status == 413 for r in emulator.upload_log):
                await anyio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            code = await proc.wait()
    data = json.loads(report.read_text())
    assert data["run_error"]["exit_class"] == "QuotaExceeded"
    assert data["exit_code"] == code == 4


def test_one_function_decides_the_exit_code() -> None:
    quota = errors.QuotaExceeded("full")
    assert errors.exit_code(run_error=quota, interrupted=True) == 4
    assert errors.exit_code(interrupted=True, files_failed=3) == 130
    assert errors.exit_code(files_failed=1) == 1
    assert errors.exit_code() == 0
    assert errors.exit_code(run_error=RuntimeError("bug")) == 1
    assert errors.exit_code(run_error=errors.CertificateRejected("x")) == 5


# --- logs a machine can read --------------------------------------------------------------------


async def test_verbose_lines_off_a_terminal_are_plain_events(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "src" / ("a-rather-long-folder-name-" * 3)
    source.mkdir(parents=True)
    (source / "file-with-a-long-name-too.txt").write_bytes(b"x")
    done = await run_cli(*upload_args(emulator, source.parent, "-vv"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode().splitlines()
    detail = [line for line in out if "bulkdrive.client" in line]
    assert detail, out
    for line in detail:
        assert ISO_UTC.match(line), line  # 2026-11-29T16:09:49.123Z DEBUG bulkdrive.client: ...
    assert any(len(line) > 100 for line in detail)  # never wrapped at 80 columns
    # the -v lines (one per file) carry their time too
    assert any(ISO_UTC.match(line) and " uploaded " in line for line in out), out
    assert not any(line.startswith("[") for line in out)


async def test_log_format_json(emulator: Emulator, tmp_path: Path) -> None:
    source = one_file(tmp_path)
    log = tmp_path / "run.ndjson"
    done = await run_cli(
        *upload_args(emulator, source, "-vv", "--log-format", "json", "--log-file", str(log)),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()
    entries: list[dict[str, Any]] = [json.loads(line) for line in log.read_text().splitlines()]
    assert all({"time", "level", "event", "path", "fields"} <= set(e) for e in entries)
    uploaded = [e for e in entries if e["event"] == "uploaded"]
    assert [e["path"] for e in uploaded] == ["f.txt"]
    assert uploaded[0]["fields"]["size"] == 5
    assert entries[-1]["event"] == "summary"
    assert entries[-1]["fields"]["exit_code"] == 0
    assert entries[-1]["fields"]["files"]["uploaded"] == 1
    detail = [line for line in done.stdout.decode().splitlines() if "bulkdrive.client" in line]
    assert detail == []  # JSON off a terminal: the protocol detail is JSON too
    assert any(json.loads(line)["level"] == "debug" for line in done.stdout.decode().splitlines()
               if line.startswith("{"))  # fmt: skip


# --- dry run, help, --bwlimit -------------------------------------------------------------------


async def test_dry_run_lists_files_asks_for_no_password_and_uploads_nothing(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = one_file(tmp_path)
    first = await run_cli(*upload_args(emulator, source), cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    (source / "new.txt").write_bytes(b"new")
    (source / "noise.log").write_bytes(b"log")
    env = cli_env(home=tmp_path)
    del env["BULKDRIVE_PASSWORD"]  # and no terminal: asking would fail the run
    logins = emulator.statistics().logins
    dry = await run_cli(
        *upload_args(emulator, source, "--dry-run", "--exclude", "*.log"), cwd=tmp_path, env=env
    )
    assert dry.returncode == 0, dry.stderr.decode()
    out = dry.stdout.decode()
    assert "would upload new.txt (3 bytes)" in out
    assert "skipped f.txt: unchanged since the last run" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("dry run: would upload 1 files") and "1 left out by the filters" in last
    assert "upload finished" not in out
    assert emulator.statistics().logins == logins  # no login, no password asked for
    assert not stored(emulator, "new.txt").exists()

    quiet = await run_cli(*upload_args(emulator, source, "--dry-run", "-q"), cwd=tmp_path, env=env)
    assert quiet.returncode == 0, quiet.stderr.decode()
    (only,) = quiet.stdout.decode().strip().splitlines()
    assert only.startswith("dry run: would upload 2 files")


async def test_dry_run_in_json_mode_ends_with_a_json_line(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = one_file(tmp_path)  # f.txt, 5 bytes
    (source / "g.bin").write_bytes(b"1234567")
    (source / "noise.log").write_bytes(b"log")
    log = tmp_path / "dry.ndjson"
    args = ["--dry-run", "--exclude", "*.log", "--log-format", "json", "--log-file", str(log)]
    for extra in ([], ["-q"]):
        dry = await run_cli(*upload_args(emulator, source, *args, *extra), cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr.decode()
        entries = [json.loads(line) for line in dry.stdout.decode().splitlines()]  # JSON only
        (closing,) = [e for e in entries if e["event"] == "dry_run"]
        assert closing["fields"] == {
            "would_upload_files": 2,
            "would_upload_bytes": 12,
            "skipped_files": 0,
            "skipped_bytes": 0,
            "filtered": 1,
        }
        assert closing["message"].startswith("dry run: would upload 2 files (12 bytes)")
        logged = [json.loads(line) for line in log.read_text().splitlines()]
        assert [e["fields"] for e in logged if e["event"] == "dry_run"] == [closing["fields"]]
        log.unlink()
    assert not stored(emulator, "f.txt").exists()


async def test_help_shows_types_and_defaults_and_matches_the_readme(tmp_path: Path) -> None:
    env = {**cli_env(home=tmp_path), "COLUMNS": "200"}
    done = await run_cli("upload", "--help", cwd=tmp_path, env=env)
    assert done.returncode == 0
    text = " ".join(done.stdout.decode().split())
    expected = ["--transfers INTEGER", "--chunk-size SIZE", "--bwlimit RATE", "--journal PATH"]
    expected += ["--connect-timeout SECONDS", "[default: 8]", "[default: 4MiB]", "local emulator"]
    for word in expected:
        assert word in text, word
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    retries_row = next(line for line in readme.splitlines() if line.startswith("| `--retries"))
    described = retries_row.split("|")[3].strip()
    assert described.lower().rstrip(".") in text.lower()
    version = await run_cli("-V", cwd=tmp_path, env=env)
    assert version.returncode == 0 and re.search(rb"\d+\.\d+", version.stdout)


async def test_bwlimit_paces_file_data_only(emulator: Emulator, tmp_path: Path) -> None:
    from bulkdrive import Credentials, EdgeDriveClient, Secret, TransferConfig, upload_file

    from conftest import PASSWORD

    data = tmp_path / "a.bin"
    data.write_bytes(os.urandom(1000))
    config = TransferConfig(bwlimit=1024 * 1024)
    credentials = Credentials(USER, Secret(PASSWORD))
    async with EdgeDriveClient.connect(
        emulator.base_url, credentials, share_id=SHARE_ID, config=config
    ) as client:
        assert client.bandwidth is not None
        assert await client.create_folder("\\", "folder") is True
        assert await client.metadata("\\folder") is not None
        assert client.bandwidth.statistics().bytes_granted == 0  # nothing queued behind chunks
        await upload_file(client, data, "\\folder")
        assert client.bandwidth.statistics().bytes_granted == 1000
    assert stored(emulator, "folder", "a.bin").read_bytes() == data.read_bytes()


async def test_status_shows_what_the_server_holds_of_partial_files(tmp_path: Path) -> None:
    from bulkdrive.journal import FileRecord, FileState, Journal

    journal = tmp_path / "job.sqlite"
    async with Journal.open(journal, exclusive=True) as writer:
        await writer.record(
            FileRecord("big.bin", 4096, 1, FileState.PARTIAL, request_id="7", offset=1024)
        )
        await writer.record(FileRecord("done.txt", 5, 1, FileState.DONE, offset=5))
        await writer.flush()
    done = await run_cli("status", "--journal", str(journal), cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert "partial (1): the server holds 1.0 KiB of 4.0 KiB" in out
    assert "big.bin: 1.0 KiB of 4.0 KiB held" in out


async def test_log_format_json_makes_stdout_json_lines(emulator: Emulator, tmp_path: Path) -> None:
    source = one_file(tmp_path)
    (source / "bad\\name.txt").write_bytes(b"x")  # no server stores a backslash: one failure
    done = await run_cli(*upload_args(emulator, source, "-v", "--log-format", "json"), cwd=tmp_path)
    assert done.returncode == 1, done.stderr.decode()
    entries = [json.loads(line) for line in done.stdout.decode().splitlines()]  # JSON only
    events = [(e["event"], e["path"]) for e in entries]
    assert ("uploaded", "f.txt") in events
    assert ("failed", "bad\\name.txt") in events
    assert entries[-1]["event"] == "summary"
    assert entries[-1]["fields"]["exit_code"] == 1 == done.returncode
    quiet = await run_cli(*upload_args(emulator, source, "--log-format", "json"), cwd=tmp_path)
    lines = [json.loads(line) for line in quiet.stdout.decode().splitlines()]
    assert {e["event"] for e in lines} <= {"failed", "summary"}  # no per-file lines without -v


async def test_bench_help_in_click_style(tmp_path: Path) -> None:
    done = await run_cli("bench", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert out.startswith("Usage: bulkdrive bench [OPTIONS]")
    assert "Options:" in out and "--workload" in out and "-h, --help" in out


async def test_bench_is_a_click_command_with_types_and_defaults(tmp_path: Path) -> None:
    env = {**cli_env(home=tmp_path), "COLUMNS": "200"}
    done = await run_cli("bench", "--help", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr.decode()
    text = " ".join(done.stdout.decode().split())
    expected = ["--repeat INTEGER", "--transfers INTEGER", "--timeout SECONDS", "--json FILE"]
    expected += ["--data-dir PATH", "[default: 3; x>=1]", "[default: 8; x>=1]"]
    expected += ["[default: 3600; x>0]", "--sweep N,N,… --transfers values", "--midrun D,D"]
    expected += ["[default: bench-data]", "[default: large,small,mixed]", "--quick", "--url URL"]
    for word in expected:
        assert word in text, word
    # parsed by click: a bad value is click's one-line usage error, exit 2, nothing measured
    bad = await run_cli("bench", "--repeat", "0", "--data-dir", "d", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert "Invalid value for '--repeat'" in bad.stderr.decode()
    assert "Traceback" not in bad.stderr.decode() and not (tmp_path / "d").exists()


async def test_status_counts_every_kind_of_skip_of_the_last_run(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = one_file(tmp_path)
    (source / "noise.log").write_bytes(b"log")
    os.symlink(source / "f.txt", source / "link.txt")
    journal = tmp_path / "job.sqlite"
    args = ["--journal", str(journal), "--exclude", "*.log"]
    first = await run_cli(*upload_args(emulator, source, *args), cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    report = tmp_path / "r.json"
    again = await run_cli(
        *upload_args(emulator, source, *args, "--report", str(report)), cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr.decode()
    kinds = json.loads(report.read_text())["skipped_by_kind"]
    assert sum(kinds.values()) == 2, kinds  # unchanged f.txt, the symlink
    done = await run_cli("status", "--journal", str(journal), cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    line = next(x for x in done.stdout.decode().splitlines() if x.startswith("last run skipped"))
    for kind, count in kinds.items():
        assert f"{count} {kind}" in line, line
    assert "1 left out by filters" in line
    # counts only: the journal holds no row per skipped file
    assert "noise.log" not in done.stdout.decode() and "link.txt" not in done.stdout.decode()

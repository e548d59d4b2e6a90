"""The client's CPU per small file outside the network.

    .venv/bin/python benchmarks/per_file_cpu.py            # upload_file alone
    .venv/bin/python benchmarks/per_file_cpu.py run [N R]  # a whole run of N files, R rounds

`upload_file` is measured against a stand-in client that answers every initiate at once, so
that only the upload driver, the state machine and the retry policy count (not aiohttp, not
the server): the median CPU per file as it is (the first try made before any tenacity object
exists) and with every try made through tenacity.

`run` measures a whole `TreeUpload` of N small files (default 3 000, 5 rounds) with a journal
and the plain reporter of `--no-progress`: the walk, the dispatcher, the journal (its writer
thread too), the workers, the upload driver, the client and its token, the outcomes; only
the transport's request is a stand-in that answers at once. It prints the CPU per file of
the whole process and of the event loop's thread. On a shared machine the CPU times move by
±15 %; for A/B of small changes, count instructions instead (deterministic):
`valgrind --tool=callgrind` of `run N 1` and of `run N 3`, the difference over 2 × N files.

The numbers behind the "Measured choices in the code" table of benchmarks/README.md.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio
from rich.console import Console

from bulkdrive import retry, upload
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, RetryPolicy, Secret, TransferConfig
from bulkdrive.journal import Journal
from bulkdrive.progress import make_reporter
from bulkdrive.protocol import UploadReply
from bulkdrive.scheduler import RunPlan, TreeUpload
from bulkdrive.source import read_small_files
from bulkdrive.transport import Body, Response

T = TypeVar("T")
CONFIG = TransferConfig(verify=False)
FILES = 100
ROUNDS = 50


class AnswersAtOnce:
    """Stands in for EdgeDriveClient: every initiate completes the file."""

    config = CONFIG

    async def initiate(self, *, size: int, eof: bool, **_: Any) -> UploadReply:
        return UploadReply(request_id="r", chunk_offset=size, file_guid="g" if eof else None)


async def through_tenacity(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, **options: Any
) -> T:
    async for attempt in retry.retrying(policy, **options):
        with attempt:
            return await call()
    raise AssertionError("unreachable")


async def per_file(paths: list[str]) -> float:
    contents = read_small_files(paths, 1 << 20)
    client: Any = AnswersAtOnce()
    started = time.process_time()
    for _ in range(ROUNDS):
        for path, content in zip(paths, contents, strict=True):
            await upload.upload_file(client, path, "\\bench\\a\\b", content=content)
    return (time.process_time() - started) / (ROUNDS * len(paths)) * 1e6


async def upload_file_alone() -> None:
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(FILES):
            path = Path(folder) / f"f{i}"
            path.write_bytes(bytes([i]) * 4096)
            paths.append(str(path))
        plain: list[float] = []
        tenacity_only: list[float] = []
        for _ in range(5):
            upload.repeat = retry.repeat  # type: ignore[attr-defined]
            plain.append(await per_file(paths))
            upload.repeat = through_tenacity  # type: ignore[attr-defined]
            tenacity_only.append(await per_file(paths))
        upload.repeat = retry.repeat  # type: ignore[attr-defined]
    print(
        f"upload_file of a 4 KiB file, no network, median of 5 × {ROUNDS * FILES} files:\n"
        f"  first try outside tenacity  {statistics.median(plain):6.1f} µs of CPU\n"
        f"  every try through tenacity  {statistics.median(tenacity_only):6.1f} µs of CPU"
    )


async def answer_at_once(
    method: str,
    path: object,
    *,
    what: str,
    token: str | None = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    data: Body | None = None,
    json_body: object = None,
    final: bool = False,
    upload: bool = False,
) -> Response:
    """The transport's request, answered at once: an initiate completes its file."""
    size = int(headers["FileSize"]) if headers and "FileSize" in headers else 0
    reply = {"requestId": "r1", "chunkOffset": size, "errorCode": 0, "fileGUID": "0123abcd"}
    return Response(200, json.dumps(reply).encode(), None)


async def one_run(source: Path, state: Path, files: int) -> tuple[float, float]:
    """CPU seconds per file of one run: the whole process's, and the event loop thread's."""
    async with aiohttp.ClientSession() as session:
        client = EdgeDriveClient(
            session,
            "http://127.0.0.1:9/webconsole/api",
            Credentials(user="u", token=Secret("QSDK t")),
            share_id="1",
            config=CONFIG,
        )
        client._transport.send = answer_at_once  # type: ignore[method-assign]
        reporter = make_reporter(
            console=Console(file=io.StringIO()),
            is_terminal=False,
            quiet=False,
            no_progress=True,
            verbosity=0,
            stats_interval=10.0,
        )
        path = state / f"journal-{time.monotonic_ns()}.sqlite"
        async with Journal.open(path, exclusive=True) as journal:
            process, thread = time.process_time(), time.thread_time()
            plan = RunPlan(source, "\\bench", config=CONFIG)
            summary = await TreeUpload(client, plan, reporter=reporter, journal=journal).run()
            process, thread = time.process_time() - process, time.thread_time() - thread
    assert summary.files.uploaded == files, summary
    return process / files * 1e6, thread / files * 1e6


async def whole_run(files: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "src"
        for i in range(files):
            sub = source / f"d{i // 500:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"f{i:05d}.txt").write_bytes(bytes([i % 251]) * 4096)
        state = Path(folder) / "state"
        state.mkdir()
        runs = [await one_run(source, state, files) for _ in range(rounds)]
    print(
        f"a run of {files} × 4 KiB files, no network, median of {rounds}: "
        f"{statistics.median(r[0] for r in runs):.1f} µs of CPU per file "
        f"({statistics.median(r[1] for r in runs):.1f} on the event loop's thread)"
    )


def main() -> None:
    if sys.argv[1:2] == ["run"]:
        files, rounds = (int(a) for a in (sys.argv[2:4] if len(sys.argv) > 3 else (3000, 5)))
        anyio.run(whole_run, files, rounds, backend_options={"use_uvloop": True})
    else:
        anyio.run(upload_file_alone, backend_options={"use_uvloop": True})


if __name__ == "__main__":
    main()

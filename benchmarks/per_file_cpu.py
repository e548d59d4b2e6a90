"""The client's CPU per small file outside the network: `upload_file` against a stand-in
client that answers every initiate at once, so that only the upload driver, the state
machine and the retry policy are measured (not aiohttp, not the server).

    .venv/bin/python benchmarks/per_file_cpu.py

Prints the median CPU per file of `upload_file` as it is (the first try made before any
tenacity object exists) and with every try made through tenacity. The numbers behind the
"Measured choices in the code" table of benchmarks/README.md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from bulkdrive import retry, upload
from bulkdrive.config import RetryPolicy, TransferConfig
from bulkdrive.protocol import UploadReply
from bulkdrive.source import read_small_files

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


async def main() -> None:
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


if __name__ == "__main__":
    sys.exit(anyio.run(main, backend_options={"use_uvloop": True}))

"""The three baselines bulkdrive is measured against, each run as its own process.

    python -m bulkdrive.bench.baselines raw SRC --url URL --user U --share ID --to '\\dest' \\
        [--transfers 8] [--chunk-size 4194304]
    python -m bulkdrive.bench.baselines sdk SRC --url URL --user U --share ID --to '\\dest'

The password comes from BULKDRIVE_PASSWORD. The third baseline, parallel curl, is a shell
script (`CURL_SCRIPT`); the harness runs it with `curl_command`, so no Python is in its path.

- raw: the ceiling for a Python client. The same initiate and chunk requests as bulkdrive (spec
  §4, §5), the same chunk size and number of files in flight, and nothing else: no retries, no
  journal, no progress, no hashing. Small reads are plain blocking reads on the event loop;
  chunk-sized reads go to a thread so the loop keeps sending meanwhile.
- sdk: the algorithm of Commvault's Python SDK (cvpysdk): one file at a time, fixed 2 MiB
  chunks, one synchronous request at a time over one kept-alive connection, as `requests`
  does. Written with http.client so it needs nothing new.
- curl: what an administrator scripts: log in once, then `xargs -P N` runs one shell function
  per file, one curl per request, chunks cut with dd.

Each baseline prints one JSON line on stdout: files, bytes and the seconds it spent uploading.
They exit 1 at the first failure: a baseline that fails is not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SDK_CHUNK = 2 * 1024 * 1024
#: Reads up to this size stay on the event loop: a thread hop costs more than the read.
BLOCKING_READ_LIMIT = 256 * 1024


@dataclass(frozen=True)
class Job:
    source: Path
    url: str  # the <webservice> root, no trailing slash
    user: str
    password: str
    share: str
    remote_folder: str  # backslash path, `\dest`
    transfers: int
    chunk_size: int


@dataclass(frozen=True)
class LocalFile:
    path: str
    size: int
    mtime: int
    parent: str  # remote folder, backslash path
    name: str


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogateescape")).decode("ascii")


def remote_folder_of(remote_root: str, relative_dir: str) -> str:
    parts = [p for p in remote_root.split("\\") if p]
    parts += [p for p in relative_dir.split(os.sep) if p and p != "."]
    return "\\" + "\\".join(parts)


def walk(job: Job) -> Iterator[LocalFile]:
    """Files in a stable order, lazily: memory does not grow with the tree."""
    root = str(job.source)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        parent = remote_folder_of(job.remote_folder, os.path.relpath(dirpath, root))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            yield LocalFile(path, st.st_size, int(st.st_mtime), parent, name)


def folders(job: Job) -> Iterator[str]:
    """Every remote folder the tree needs, parents first."""
    root = str(job.source)
    yield remote_folder_of(job.remote_folder, ".")
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        for name in dirnames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            yield remote_folder_of(job.remote_folder, rel)


def upload_path(job: Job, request_id: str | None = None, full_file: bool = False) -> str:
    """The upload request's path and query under the <webservice> root (spec §4, §5, §7)."""
    kind = "fullFile" if full_file else "chunkedFile"
    path = f"/drive/share/{job.share}/file/action/upload?uploadType={kind}"
    if request_id is not None:
        path += "&requestId=" + urllib.parse.quote(request_id)
    return path


def initiate_headers(token: str, f: LocalFile, eof: bool) -> dict[str, str]:
    return {
        "Authtoken": token,
        "Accept": "application/json",
        "FileName": _b64(f.name),
        "FileSize": str(f.size),
        "FileModifiedtime": str(f.mtime),
        "ParentFolderPath": _b64(f.parent),
        "FileEOF": "1" if eof else "0",
    }


def login_body(user: str, password: str) -> bytes:
    return json.dumps({"username": user, "password": _b64(password)}).encode()


def _reply_field(body: bytes, key: str) -> str:
    data = json.loads(body)
    if len(data) == 1 and isinstance(next(iter(data.values())), dict):
        data = {k.lstrip("@"): v for k, v in next(iter(data.values())).items()}  # wrapped JSON
    value = data.get(key)
    if value in (None, ""):
        raise RuntimeError(f"no {key} in the reply: {body[:200]!r}")
    return str(value)


def folder_request(parent_and_name: str) -> tuple[str, bytes]:
    parent, _, name = parent_and_name.rpartition("\\")
    return name, json.dumps({"name": name, "parentPath": parent or "\\"}).encode()


# --- raw: aiohttp, bounded concurrency, nothing else -----------------------------------------


async def raw_upload(job: Job) -> tuple[int, int]:
    import aiohttp

    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=job.transfers)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    files = bytes_sent = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http_session:

        async def post(url: str, headers: dict[str, str], body: bytes) -> bytes:
            async with http_session.post(url, headers=headers, data=body) as resp:
                reply = await resp.read()
                if resp.status not in (200, 201):
                    raise RuntimeError(f"HTTP {resp.status} from {url}: {reply[:200]!r}")
                return reply

        reply = await post(
            f"{job.url}/Login",
            {"Accept": "application/json", "Content-Type": "application/json"},
            login_body(job.user, job.password),
        )
        token = _reply_field(reply, "token")
        # Each folder is created once, just before the first file that needs it (its parents
        # first), by whichever worker gets there first; the others wait for it.
        made: dict[str, asyncio.Future[None]] = {}

        async def create(folder: str) -> None:
            _, body = folder_request(folder)
            url = f"{job.url}/drive/share/{job.share}/action/createfolder"
            async with http_session.post(
                url,
                data=body,
                headers={
                    "Authtoken": token,
                    "Accept": "application/json",
                    "Content-Type": "application/json",
                },
            ) as resp:
                await resp.read()
                if resp.status not in (200, 201, 409):
                    raise RuntimeError(f"createfolder {folder}: HTTP {resp.status}")

        async def ensure_folder(folder: str) -> None:
            if folder in ("", "\\"):
                return
            future = made.get(folder)
            if future is not None:
                await future
                return
            made[folder] = future = loop.create_future()
            try:
                await ensure_folder(folder.rpartition("\\")[0])
                await create(folder)
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # retrieved: the waiters, if any, raise it too
                raise
            future.set_result(None)

        async def read(fh: object, size: int) -> bytes:
            if size <= BLOCKING_READ_LIMIT:
                return fh.read(size)  # type: ignore[attr-defined, no-any-return]
            return await loop.run_in_executor(None, fh.read, size)  # type: ignore[attr-defined]

        async def send(f: LocalFile) -> None:
            await ensure_folder(f.parent)
            with open(f.path, "rb", buffering=0) as fh:
                first = await read(fh, min(job.chunk_size, f.size))
                offset = len(first)
                headers = initiate_headers(token, f, offset >= f.size)
                reply = await post(job.url + upload_path(job), headers, first)
                request_id = _reply_field(reply, "requestId")
                while offset < f.size:
                    chunk = await read(fh, min(job.chunk_size, f.size - offset))
                    if not chunk:
                        raise RuntimeError(f"{f.path} shrank while being read")
                    offset += len(chunk)
                    headers = {
                        "Authtoken": token,
                        "Accept": "application/json",
                        "FileEOF": "1" if offset >= f.size else "0",
                    }
                    await post(job.url + upload_path(job, request_id), headers, chunk)

        pending = walk(job)  # shared by the workers: each takes the next file

        async def worker() -> None:
            nonlocal files, bytes_sent
            for f in pending:
                await send(f)
                files += 1
                bytes_sent += f.size

        await asyncio.gather(*(worker() for _ in range(job.transfers)))
    return files, bytes_sent


# --- sdk: sequential, 2 MiB chunks, synchronous -----------------------------------------------


class SyncConnection:
    """One synchronous request at a time, each on a fresh connection.

    cvpysdk sends every call through `requests.request(...)` (cvpysdk.py, `_request`), which
    builds a throwaway Session per call: a new TCP (and TLS) connection for every request,
    closed when the reply has been read.
    """

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.prefix = parts.path.rstrip("/")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port
        self.cls = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )

    def _call(
        self, method: str, path_and_query: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, bytes]:
        conn = self.cls(self.host, self.port, timeout=600)
        try:
            conn.request(method, self.prefix + path_and_query, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def post(self, path_and_query: str, headers: dict[str, str], body: bytes) -> bytes:
        status, reply = self._call("POST", path_and_query, headers, body)
        if status not in (200, 201):
            raise RuntimeError(f"HTTP {status} from {path_and_query}: {reply[:200]!r}")
        return reply

    def get(self, path_and_query: str, headers: dict[str, str]) -> tuple[int, bytes]:
        return self._call("GET", path_and_query, headers, None)

    def close(self) -> None:
        """Nothing stays open between requests."""


def sync_login(conn: SyncConnection, user: str, password: str) -> str:
    reply = conn.post(
        "/Login",
        {"Accept": "application/json", "Content-Type": "application/json"},
        login_body(user, password),
    )
    return _reply_field(reply, "token")


def sdk_upload(job: Job) -> tuple[int, int]:
    """cvpysdk's `Client.upload_file` for every file of the tree, one after another.

    A file of at most 2 MiB goes whole in one fullFile request; a larger one in 2 MiB chunks
    of one chunked session (spec §4, §5, §7).
    """
    conn = SyncConnection(job.url)
    files = bytes_sent = 0
    try:
        token = sync_login(conn, job.user, job.password)
        for f in walk(job):
            with open(f.path, "rb") as fh:
                if f.size <= SDK_CHUNK:
                    headers = initiate_headers(token, f, eof=True)
                    del headers["FileEOF"]
                    conn.post(upload_path(job, full_file=True), headers, fh.read())
                else:
                    first = fh.read(SDK_CHUNK)
                    offset = len(first)
                    reply = conn.post(upload_path(job), initiate_headers(token, f, False), first)
                    request_id = _reply_field(reply, "requestId")
                    while offset < f.size:
                        chunk = fh.read(min(SDK_CHUNK, f.size - offset))
                        if not chunk:
                            raise RuntimeError(f"{f.path} shrank while being read")
                        offset += len(chunk)
                        headers = {
                            "Authtoken": token,
                            "Accept": "application/json",
                            "FileEOF": "1" if offset >= f.size else "0",
                        }
                        conn.post(upload_path(job, request_id), headers, chunk)
            files += 1
            bytes_sent += f.size
    finally:
        conn.close()
    return files, bytes_sent


# --- curl: xargs -P N, one curl per request ---------------------------------------------------

#: Run as `bash -c CURL_SCRIPT bash SRC`; settings in the environment (see `curl_command`).
#: Written the way an administrator would: bash builtins where they are natural, dd to cut
#: chunks, the token in a header file so that it never appears in a process list.
CURL_SCRIPT = r"""
set -euo pipefail
cd "$1"
export HDRS
HDRS=$(mktemp)
trap 'rm -f "$HDRS"' EXIT
chmod 600 "$HDRS"
login=$(printf '{"username":"%s","password":"%s"}' "$BENCH_USER" \
        "$(printf %s "$BULKDRIVE_PASSWORD" | base64 -w0)" |
        curl -sS --fail -H 'Content-Type: application/json' -H 'Accept: application/xml' \
             --data-binary @- "$BENCH_URL/Login")
[[ $login =~ token=\"([^\"]+)\" ]] || { echo "login failed" >&2; exit 1; }
printf 'Authtoken: %s\n' "${BASH_REMATCH[1]}" > "$HDRS"

upload_one() {
    local rel=${1#./} base dir parent size mtime chunks k eof resp rid
    local up="$BENCH_URL/drive/share/$BENCH_SHARE/file/action/upload?uploadType=chunkedFile"
    base=${rel##*/}
    dir=.; [[ $rel == */* ]] && dir=${rel%/*}
    parent=$BENCH_TO; [[ $dir != . ]] && parent="$BENCH_TO\\${dir//\//\\}"
    read -r size mtime < <(stat -c '%s %Y' "$rel")
    chunks=$(( (size + BENCH_CHUNK - 1) / BENCH_CHUNK ))
    eof=0; (( chunks <= 1 )) && eof=1
    if (( chunks <= 1 )); then
        resp=$(curl -sS --fail -H @"$HDRS" -H 'Accept: application/xml' \
            -H "FileName: $(printf %s "$base" | base64 -w0)" -H "FileSize: $size" \
            -H "FileModifiedtime: $mtime" -H "FileEOF: 1" \
            -H "ParentFolderPath: $(printf %s "$parent" | base64 -w0)" \
            --data-binary @"$rel" "$up")
        return 0
    fi
    resp=$(dd if="$rel" bs="$BENCH_CHUNK" skip=0 count=1 status=none |
        curl -sS --fail -H @"$HDRS" -H 'Accept: application/xml' \
            -H "FileName: $(printf %s "$base" | base64 -w0)" -H "FileSize: $size" \
            -H "FileModifiedtime: $mtime" -H "FileEOF: 0" \
            -H "ParentFolderPath: $(printf %s "$parent" | base64 -w0)" \
            --data-binary @- "$up")
    [[ $resp =~ requestId=\"([^\"]+)\" ]] || { echo "no requestId for $rel" >&2; return 1; }
    rid=${BASH_REMATCH[1]}
    for (( k = 1; k < chunks; k++ )); do
        eof=0; (( k == chunks - 1 )) && eof=1
        dd if="$rel" bs="$BENCH_CHUNK" skip="$k" count=1 status=none |
            curl -sS --fail -o /dev/null -H @"$HDRS" -H 'Accept: application/xml' \
                -H "FileEOF: $eof" --data-binary @- "$up&requestId=$rid"
    done
}
export -f upload_one
find . -type f -print0 | xargs -0 -r -P "$BENCH_TRANSFERS" -n 1 bash -c 'upload_one "$1"' _
"""


def curl_command(job: Job) -> tuple[list[str], dict[str, str]]:
    """argv and the extra environment that run the curl baseline on `job`."""
    env = {
        "BENCH_URL": job.url,
        "BENCH_USER": job.user,
        "BENCH_SHARE": job.share,
        "BENCH_TO": job.remote_folder,
        "BENCH_CHUNK": str(job.chunk_size),
        "BENCH_TRANSFERS": str(job.transfers),
        "BULKDRIVE_PASSWORD": job.password,
    }
    return ["bash", "-c", CURL_SCRIPT, "bash", str(job.source)], env


def baseline_command(mode: str, job: Job, python: str = sys.executable) -> list[str]:
    """argv that runs the raw or sdk baseline on `job` (the password goes in the environment)."""
    return [
        python,
        "-m",
        "bulkdrive.bench.baselines",
        mode,
        str(job.source),
        "--url",
        job.url,
        "--user",
        job.user,
        "--share",
        job.share,
        "--to",
        job.remote_folder,
        "--transfers",
        str(job.transfers),
        "--chunk-size",
        str(job.chunk_size),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bulkdrive benchmark baselines")
    parser.add_argument("mode", choices=("raw", "sdk"))
    parser.add_argument("source", type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--share", required=True)
    parser.add_argument("--to", default="\\")
    parser.add_argument("--transfers", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=4 * 1024 * 1024)
    args = parser.parse_args(argv)
    password = os.environ.get("BULKDRIVE_PASSWORD")
    if password is None:
        parser.error("set BULKDRIVE_PASSWORD")
    job = Job(
        args.source,
        args.url.rstrip("/"),
        args.user,
        password,
        args.share,
        args.to,
        max(1, args.transfers),
        args.chunk_size,
    )
    started = time.perf_counter()
    try:
        if args.mode == "raw":
            files, sent = asyncio.run(raw_upload(job))
        else:
            files, sent = sdk_upload(job)
    except Exception as exc:  # a baseline that fails reports it in one line and exits 1
        print(f"baseline {args.mode}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    print(json.dumps({"files": files, "bytes": sent, "seconds": round(seconds, 6)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

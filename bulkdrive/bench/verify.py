"""Checking what a contender stored: every byte against the source on a local emulator, the
sizes of sampled files read back by the metadata call on a real server. A fast wrong upload
is not a measurement."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from bulkdrive import protocol
from bulkdrive.bench import baselines
from bulkdrive.bench.processes import Server
from bulkdrive.bench.results import MiB

_COMPARE_BLOCK = 8 * MiB


def verify_local(source: Path, stored: Path) -> str:
    """'' when `stored` holds exactly `source`'s files with the same bytes, else the reason.

    Every byte is compared (both sides are in the page cache: about a second per 2 GiB).
    """
    expected = 0
    for dirpath, _, filenames in os.walk(source):
        rel_dir = os.path.relpath(dirpath, source)
        for name in filenames:
            expected += 1
            problem = _compare(os.path.join(dirpath, name), os.path.join(stored, rel_dir, name))
            if problem:
                return f"{os.path.normpath(os.path.join(rel_dir, name))}: {problem}"
    found = sum(len(names) for _, _, names in os.walk(stored))
    if found != expected:
        return f"stored {found} files, expected {expected}"
    return ""


def _compare(src: str, dst: str) -> str:
    try:
        size = os.stat(src).st_size
        stored_size = os.stat(dst).st_size
    except FileNotFoundError:
        return "not stored"
    if stored_size != size:
        return f"stored {stored_size} bytes, expected {size}"
    with open(src, "rb", buffering=0) as a, open(dst, "rb", buffering=0) as b:
        offset = 0
        while True:
            block = a.read(_COMPARE_BLOCK)
            if block != b.read(_COMPARE_BLOCK):
                return f"bytes differ in the block at offset {offset}"
            if not block:
                return ""
            offset += len(block)


def verify_remote(server: Server, folder: str, source: Path, sample: int = 50) -> str:
    """Against a real server: the sizes of up to `sample` files, read back by the metadata call."""
    job = baselines.Job(
        source, server.url, server.user, server.password, server.share, folder, 1, 4 * MiB
    )
    found = list(baselines.walk(job))
    step = max(1, len(found) // sample)
    conn = baselines.SyncConnection(server.url)
    try:
        token = baselines.sync_login(conn, server.user, server.password)
        for f in found[::step]:
            remote = f"{f.parent.rstrip(chr(92))}\\{f.name}"
            query = f"/drive/share/{server.share}/action/metadata?path=" + urllib.parse.quote(
                remote
            )
            status, body = conn.get(query, {"Authtoken": token, "Accept": "application/xml"})
            if status != 200:
                return f"{remote}: metadata HTTP {status}"
            node = protocol.parse_body(body).first("fileResource")
            size = node.int("sizeinBytes", -1) if node else -1
            if size != f.size:
                return f"{remote}: server holds {size} bytes, expected {f.size}"
    finally:
        conn.close()
    return ""

"""`bulkdrive serve`: run the Edge Drive emulator until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click

from bulkdrive import collector, protocol
from bulkdrive.emulator.app import running_emulator
from bulkdrive.emulator.config import EmulatorConfig, Share, User
from bulkdrive.emulator.faults import parse_kinds
from bulkdrive.emulator.network import NetworkModel, parse_duration, parse_rate

DEMO_USER = User("demo", "demo")
_SHARE_ID = re.compile(r"^[A-Za-z0-9_-]+$")
DEMO_SHARE = Share("1", "demo")


def _parse_user(text: str) -> User:
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        # Never echo the value: it may hold a password.
        raise click.BadParameter("expected NAME:PASSWORD", param_hint="--user")
    return User(name, password)


def _parse_share(text: str) -> Share:
    parts = text.split(":")
    flags = {"public": False, "readonly": False}
    while len(parts) > 2 and parts[-1].lower() in flags:
        flags[parts.pop().lower()] = True
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise click.BadParameter(
            f"expected ID:NAME[:public|:readonly], got {text!r}", param_hint="--share"
        )
    if not _SHARE_ID.match(parts[0]) or parts[0].lower() == "drive":
        raise click.BadParameter(
            f"share id {parts[0]!r}: use letters, digits, '_' or '-' (not 'drive')",
            param_hint="--share",
        )
    return Share(parts[0], parts[1], public=flags["public"], readonly=flags["readonly"])


def _network(latency: str, max_active: int | None, bandwidth: str | None) -> NetworkModel:
    try:
        seconds = parse_duration(latency)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--latency") from None
    rate: int | None = None
    if bandwidth is not None:
        try:
            rate = parse_rate(bandwidth)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--bandwidth") from None
    return NetworkModel(latency=seconds, max_active=max_active, bandwidth=rate)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any address


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (a dependency off Windows), as the client uses: the
    emulator shares the machine with the client it serves in tests and benchmarks, and
    asyncio's own loop was about a third of its CPU per request. BULKDRIVE_LOOP=asyncio
    keeps asyncio's loop."""
    if os.environ.get("BULKDRIVE_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Buffers below this come from the heap, not from a fresh mmap each (a request holds at most
#: ~2 MiB of its body at once: two batches of disk.WRITE_BATCH, or uploads.ONE_STEP_FILE_BYTES).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Freed heap memory is given back only above this: the working set of bodies in flight is
#: reused instead of faulted in again for every body.
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024


def _reuse_freed_memory() -> None:
    """Large request bodies arrive in pieces of up to a few hundred KiB: with glibc's default
    (dynamic) thresholds many were served by a fresh mmap or the heap was trimmed after them,
    and each body's pages were faulted in again — on uvloop often enough to make it slower
    than asyncio for large files. Fixed thresholds keep them on the heap, whose memory stays at
    the peak of bodies in flight (~2 MiB per request), never growing past it. The
    server only (a library does not change its user's allocator); GLIBC_TUNABLES set by the
    user's own glibc.malloc settings win."""
    if not sys.platform.startswith("linux") or "glibc.malloc." in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)


def _print_line(text: str) -> None:
    click.echo(text)
    sys.stdout.flush()


async def _serve(config: EmulatorConfig, announce: list[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_emulator(config) as emulator:
        for line in announce:
            _print_line(line)
        _print_line(f"bulkdrive emulator listening on {emulator.base_url} (root {emulator.root})")
        with collector.fewer_collections():
            await stop.wait()
    _print_line("bulkdrive emulator stopped")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8400,
    show_default=True,
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--root",
    "root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for shares (ROOT/<shareId>/...) and the emulator's state (ROOT/.bulkdrive).",
)
@click.option(
    "--user", "users", multiple=True, metavar="NAME:PASSWORD", help="A user (repeatable)."
)
@click.option(
    "--share",
    "shares",
    multiple=True,
    metavar="ID:NAME[:public|:readonly]",
    help="A share (repeatable).",
)
@click.option("--quota", type=click.IntRange(min=0), default=None, help="Bytes over all shares.")
@click.option(
    "--max-chunk-bytes",
    type=click.IntRange(min=1),
    default=32 * 1024 * 1024,
    show_default=True,
    help="Largest accepted request body; larger gets 413.",
)
@click.option(
    "--token-idle-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=1800.0,
    show_default=True,
)
@click.option(
    "--session-ttl-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=86400.0,
    show_default=True,
)
@click.option("--strict-parents", is_flag=True, help="Answer 404 when a parent folder is missing.")
@click.option(
    "--windows-names",
    is_flag=True,
    help='Answer 400 for names Windows refuses (<>:"|?*, controls, trailing dot/space, CON...).',
)
@click.option(
    "--json-dialect", type=click.Choice(["flat", "wrapped"]), default="flat", show_default=True
)
@click.option(
    "--fault-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Fraction of upload requests that get a fault.",
)
@click.option("--fault-seed", type=int, default=0, show_default=True)
@click.option(
    "--faults",
    "fault_names",
    default="",
    metavar="KINDS",
    help="Comma list of 500,503,reset,lost-response,delay (default: all).",
)
@click.option("--fault-delay-seconds", type=click.FloatRange(min=0), default=0.5, show_default=True)
@click.option(
    "--log-requests",
    "request_log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append one JSON line per request to FILE "
    "(time, method, path, query, status, bytes, duration).",
)
@click.option(
    "--latency",
    default="0",
    metavar="DURATION",
    help="Answer each request no sooner than this after it arrived, e.g. 20ms.",
)
@click.option(
    "--max-active",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Beyond N requests being processed, answer 503 with Retry-After.",
)
@click.option(
    "--bandwidth",
    default=None,
    metavar="RATE",
    help="Read request bodies at most at RATE bytes/s in total, e.g. 100MB/s.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The PEM private key of --tls-cert.",
)
def serve(
    host: str,
    port: int,
    root: Path,
    users: tuple[str, ...],
    shares: tuple[str, ...],
    quota: int | None,
    max_chunk_bytes: int,
    token_idle_seconds: float,
    session_ttl_seconds: float,
    strict_parents: bool,
    windows_names: bool,
    json_dialect: str,
    fault_rate: float,
    fault_seed: int,
    fault_names: str,
    fault_delay_seconds: float,
    request_log: Path | None,
    latency: str,
    max_active: int | None,
    bandwidth: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Run the Edge Drive emulator (a local upload server for tests and benchmarks)."""
    parsed_users = tuple(_parse_user(u) for u in users)
    parsed_shares = tuple(_parse_share(s) for s in shares)
    try:
        kinds = parse_kinds([fault_names])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--faults") from None
    network = _network(latency, max_active, bandwidth)
    announce: list[str] = []
    if not network.is_direct:
        announce.append(
            f"network model: latency {network.latency * 1000:g} ms, "
            f"max active {network.max_active or 'unlimited'}, "
            f"bandwidth {f'{network.bandwidth} bytes/s' if network.bandwidth else 'unlimited'}"
        )
    if not parsed_users:
        parsed_users = (DEMO_USER,)
        # The demo credential belongs to the emulator itself, so showing it is fine.
        announce.append(f"demo user: {DEMO_USER.name} (password: {DEMO_USER.password})")
        if not _is_loopback(host):
            click.echo(
                f"bulkdrive: warning: serving on {host} with the demo user "
                f"{DEMO_USER.name}:{DEMO_USER.password}: anyone who reaches this address can "
                "log in and upload; give --user NAME:PASSWORD",
                err=True,
            )
    if not parsed_shares:
        parsed_shares = (DEMO_SHARE,)
        announce.append(f"demo share: id {DEMO_SHARE.share_id} ({DEMO_SHARE.name})")
    try:
        config = EmulatorConfig(
            root=root,
            host=host,
            port=port,
            users=parsed_users,
            shares=parsed_shares,
            quota=quota,
            max_chunk_bytes=max_chunk_bytes,
            token_idle_seconds=token_idle_seconds,
            session_ttl_seconds=session_ttl_seconds,
            strict_parents=strict_parents,
            windows_names=windows_names,
            json_dialect=protocol.Format.WRAPPED
            if json_dialect == "wrapped"
            else protocol.Format.JSON,
            fault_rate=fault_rate,
            fault_seed=fault_seed,
            faults=kinds,
            fault_delay_seconds=fault_delay_seconds,
            request_log=request_log,
            network=network,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        _reuse_freed_memory()
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_serve(config, announce))
    except OSError as exc:
        message = f"cannot serve on {host}:{port} with root {root}: {exc}"
        raise click.ClickException(message) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None

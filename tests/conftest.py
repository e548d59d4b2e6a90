"""Shared fixtures: a real emulator on 127.0.0.1 with an ephemeral port, real files on disk."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bulkdrive.emulator import Emulator, EmulatorConfig, Share, User, running_emulator

import edge_raw as er

USER = "alice"
PASSWORD = "s3cret-Pa55"
SHARE_ID = "1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def emulator_config(root: Path, **overrides: Any) -> EmulatorConfig:
    """The test default: one user, a writable share 1, a view-only share 2, a public share 3."""
    base = EmulatorConfig(
        root=root,
        host="127.0.0.1",
        port=0,
        users=(User(USER, PASSWORD),),
        shares=(
            Share(SHARE_ID, "projects"),
            Share("2", "readonly", readonly=True),
            Share("3", "public", public=True),
        ),
    )
    return dataclasses.replace(base, **overrides)


EmulatorFactory = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def make_emulator(tmp_path: Path) -> AsyncIterator[EmulatorFactory]:
    """Start emulators with overrides of `emulator_config`; all are stopped at the end."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Emulator:
            overrides.setdefault("root", tmp_path / "server")
            root = overrides.pop("root")
            return await stack.enter_async_context(
                running_emulator(emulator_config(root, **overrides))
            )

        yield start


@pytest.fixture
async def emulator(make_emulator: EmulatorFactory) -> Emulator:
    return await make_emulator()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Where `make_emulator` keeps the server's files unless a test says otherwise."""
    return tmp_path / "server"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A raw client session, for tests that speak the protocol by hand."""
    async with er.client() as session:
        yield session


@pytest.fixture
async def token(emulator: Emulator, http: aiohttp.ClientSession) -> str:
    return await er.login(http, emulator.base_url)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside ROOT that no request may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_bytes(b"top secret")
    return path

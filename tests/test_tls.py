"""TLS as users have it: an emulator serving HTTPS with a certificate from a company CA (made
by trustme), and `bulkdrive upload` through the CLI trusting that CA with --ca-bundle, through
the system trust store, or not at all (--insecure).

The system store is not touched: on Linux the system trust store *is* OpenSSL's default
verify paths, which SSL_CERT_FILE and SSL_CERT_DIR point elsewhere for one process; truststore
reads exactly those paths there, so a CA given that way to the subprocess takes the same road
as a CA installed in /etc/ssl/certs. (On Windows and macOS truststore asks the OS instead;
those are not tested here.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from test_cli_newcomer import one_file, only_line
from test_cli_upload import cli_env, run_cli, stored, upload_args

from bulkdrive.emulator import Emulator, running_emulator

from conftest import emulator_config

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def company_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate chain, server key) as PEM files."""
    folder = tmp_path_factory.mktemp("ca")
    ca = trustme.CA(organization_name="Example Corp")
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_pem, chain, key = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca.cert_pem.write_to_path(str(ca_pem))
    chain.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(key))
    return ca_pem, chain, key


@pytest.fixture
async def https_emulator(
    company_ca: tuple[Path, Path, Path], tmp_path: Path
) -> AsyncIterator[Emulator]:
    _, chain, key = company_ca
    config = emulator_config(tmp_path / "server", tls_cert=chain, tls_key=key)
    async with running_emulator(config) as emulator:
        assert emulator.base_url.startswith("https://127.0.0.1:")
        yield emulator


def untrusting_env(home: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment, with a system store that does not hold the company CA."""
    empty = home / "empty-store"
    empty.mkdir(exist_ok=True)
    return cli_env({"SSL_CERT_DIR": str(empty), "SSL_CERT_FILE": str(empty / "none.pem"), **extra},
                   home=home)  # fmt: skip


async def test_upload_over_https_with_ca_bundle(
    https_emulator: Emulator, company_ca: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ca_pem, _, _ = company_ca
    source = one_file(tmp_path, b"over TLS")
    done = await run_cli(
        *upload_args(https_emulator, source, "--ca-bundle", str(ca_pem)),
        cwd=tmp_path,
        env=untrusting_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr.decode()
    assert stored(https_emulator, "f.txt").read_bytes() == b"over TLS"
    assert https_emulator.statistics().completed_files == 1


async def test_an_unknown_ca_is_one_line_naming_ca_bundle(
    https_emulator: Emulator, tmp_path: Path
) -> None:
    source = one_file(tmp_path)
    done = await run_cli(
        *upload_args(https_emulator, source), cwd=tmp_path, env=untrusting_env(tmp_path)
    )
    assert done.returncode == 5, done.stderr.decode()
    line = only_line(done)
    assert "certificate" in line.lower() and "--ca-bundle" in line
    assert https_emulator.statistics().logins == 0
    assert not stored(https_emulator, "f.txt").exists()


async def test_insecure_works_and_warns(https_emulator: Emulator, tmp_path: Path) -> None:
    source = one_file(tmp_path, b"unchecked")
    done = await run_cli(
        *upload_args(https_emulator, source, "--insecure"),
        cwd=tmp_path,
        env=untrusting_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "TLS certificate verification is off" in done.stderr.decode()
    assert stored(https_emulator, "f.txt").read_bytes() == b"unchecked"


async def test_a_ca_in_the_system_store_is_trusted_without_flags(
    https_emulator: Emulator, company_ca: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ca_pem, _, _ = company_ca
    source = one_file(tmp_path, b"system store")
    env = untrusting_env(tmp_path, SSL_CERT_FILE=str(ca_pem))
    done = await run_cli(*upload_args(https_emulator, source), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert stored(https_emulator, "f.txt").read_bytes() == b"system store"


def test_serve_tls_flags_and_the_demo_credential_warning(
    company_ca: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """`bulkdrive serve --tls-cert --tls-key` announces an https URL; serving the demo user on a
    non-loopback address warns (0.0.0.0 binds every address, loopback included)."""
    _, chain, key = company_ca
    argv = [sys.executable, "-m", "bulkdrive", "serve", "--port", "0", "--host", "0.0.0.0"]
    argv += ["--root", str(tmp_path / "server"), "--tls-cert", str(chain), "--tls-key", str(key)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            announced = ""
            for _ in range(10):
                line = proc.stdout.readline().decode()
                if "listening on " in line:
                    announced = line
                    break
            assert "listening on https://0.0.0.0:" in announced, announced
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
    assert "warning" in err.decode() and "--user" in err.decode()

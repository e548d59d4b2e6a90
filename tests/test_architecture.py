"""The rooms of the house and the arrows between them, pinned.

Every module of `bulkdrive` has a row in ROOMS: the rooms it may import. Imports are read from
the source (also the ones inside functions), so a lazy import counts as much as a top one.
The table itself must point one way (no cycles): cli → job → scheduler → upload → session,
source, client → protocol, with `errors`, `config` and a few more leaves anyone may import,
and the emulator importing nothing of the uploader but `protocol`, `errors` and two leaves of
plumbing (`collector`, `inline_io`).

A new module, or a new arrow, is a change of this table: say in the review why it points down.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import bulkdrive

PACKAGE = Path(bulkdrive.__file__).parent

#: The leaves: anyone may import them.
LEAVES = frozenset({"errors", "config", "collector", "inline_io"})

#: Module → the modules of ours it may import besides LEAVES (names without `bulkdrive.`;
#: the package itself is ``__init__``). `config` is a leaf that reads the one wire constant
#: it needs (the integrity block size) from `protocol`, which imports only `errors`.
ROOMS: dict[str, frozenset[str]] = {
    name: frozenset(allowed.split())
    for name, allowed in {
        # -- the public API and the commands
        "__init__": "client report scheduler upload walk",
        "__main__": "cli",
        "cli": "job settings status bench.run",
        # The commands besides upload (shares, ls, check…): the CLI's room, reusing its helpers.
        # It writes --report files as `job` does (report).
        "migration": "cli target client listing journals protocol report settings",
        # `bulkdrive check`: the comparison (check) as a command, on the plumbing of migration.
        "check_command": "cli check listing migration report_json settings target",
        # The log's lines and where they go (console, --log-file, JSON screen).
        "eventlog": "report",
        # -- one job, from settings to exit code
        "job": "client cluster eventlog journal names progress report report_json"
        " scheduler settings target",
        # What a job is aimed at, from its settings (server or embedded emulator, key, journal,
        # filters): below job, status, check and the other commands, which all reach it.
        "target": "emulator globs journal protocol settings shard walk",
        # `bulkdrive status`: reads a job's journal(s); never runs anything.
        "status": "journal report shard target",
        # -- the run
        "scheduler": "auto_transfers client dispatch engine_batches file_events journal names "
        "outcomes progress protocol remote_folders report resume source upload walk",
        # Under an engine (--cluster) a dispatched batch goes out whole, its outcomes come back.
        "engine_batches": "file_events journal names outcomes progress remote_folders report "
        "resume session upload walk",
        # The run's rooms: the dispatcher (skips, in-flight marks, read-ahead, hand-out)...
        "dispatch": "check client journal names outcomes progress remote_folders report resume "
        "source upload walk",
        # ...a finished file accounted once (journal, tally, progress, --report-files)...
        "outcomes": "file_events journal progress remote_folders report resume upload walk",
        # ...a file's upload events, and the counters --transfers auto measures...
        "file_events": "journal progress report resume tuner walk",
        # ...the remote folders, created ahead of their files...
        "remote_folders": "client names progress protocol work_queue",
        # ...and the --transfers auto driver loop around the pure tuner.
        "auto_transfers": "file_events progress report tuner",
        # --transfers auto: a pure controller, measurements in, the next limit out.
        "tuner": "",
        # Work for a few long-lived tasks (folder creators, a worker's uploads).
        "work_queue": "",
        # --cluster: the run's files uploaded by Dask workers with the same per-file engine.
        "cluster": "client cluster_engine cluster_wire cluster_worker progress",
        # ...its coordinator's engine (batches out as Dask tasks), the replay of a worker's
        # report into the run, the worker side (the Dask task), and what travels between.
        "cluster_engine": "cluster_replay cluster_wire cluster_worker engine_batches outcomes "
        "progress report",
        "cluster_replay": "cluster_wire upload",
        "cluster_worker": "client cluster_wire config protocol session source upload work_queue",
        "cluster_wire": "session",
        "resume": "journal source upload walk",
        "check": "client journal listing names protocol walk",
        "journals": "journal",
        "listing": "client protocol",
        "walk": "globs scan shard",
        # The walk's parts: what its filters match (pure), and one local folder read off the loop.
        "globs": "",
        "scan": "",
        # --shard K/N: which paths are this process's; a pure function of the path.
        "shard": "",
        "names": "",
        "journal": "",
        "progress": "report",
        "report": "",
        # --report documents, written atomically; below job and the commands, above report.
        "report_json": "report",
        # -- one file
        "upload": "client integrity protocol retry session source",
        "session": "protocol",
        "source": "",
        "integrity": "protocol",
        # -- the wire: the endpoints, over the token, over one request each
        "client": "auth protocol retry transport",
        # The login token: Login, renewal after a 401, logout; its requests go by transport.
        "auth": "protocol retry transport",
        # One request: aiohttp's errors and failed replies translated, the breaker, --bwlimit.
        "transport": "bandwidth breaker protocol server_errors",
        # The tenacity policy for transient failures (the client's calls and the upload's).
        "retry": "",
        # What error replies mean: the client's side of the boundary, not shared.
        "server_errors": "protocol",
        "breaker": "",
        "bandwidth": "",
        "protocol": "",
        "errors": "",
        "config": "protocol",
        # The garbage collector tuned for a long run of small requests (upload, coordinator,
        # serve): a leaf, standard library only.
        "collector": "",
        # Small-file I/O on the event loop while it stays quick (the uploader's reads, the
        # emulator's writes): a leaf, standard library only.
        "inline_io": "",
        # The commands' options as one typed object, and how they become a TransferConfig.
        "settings": "protocol",
        # -- the emulator: a second program, sharing only the wire contract and the errors
        "emulator": "emulator.app emulator.config emulator.wire",
        "emulator.command": "emulator.app emulator.config emulator.faults emulator.network "
        "protocol",
        "emulator.app": "emulator.auth emulator.config emulator.faults emulator.network "
        "emulator.records emulator.refusals emulator.store emulator.uploads emulator.wire protocol",
        "emulator.auth": "emulator.config emulator.database emulator.wire protocol",
        "emulator.uploads": "emulator.faults emulator.records emulator.refusals emulator.wire "
        "protocol",
        "emulator.wire": "emulator.config emulator.faults emulator.records emulator.store protocol",
        "emulator.config": "emulator.faults emulator.network protocol",
        "emulator.network": "",
        "emulator.store": "emulator.database emulator.disk emulator.records emulator.refusals "
        "protocol",
        # The store's records (target, session, completed file), ids, the §6 integrity rule.
        "emulator.records": "emulator.refusals protocol",
        "emulator.disk": "emulator.refusals protocol",
        "emulator.database": "",
        "emulator.refusals": "",
        "emulator.faults": "",
        # -- the benchmark harness: runs bulkdrive as a program, never imports its engine
        "bench": "",
        "bench.run": "bench.contenders bench.harness bench.midrun bench.output bench.processes "
        "bench.sweep bench.sweep_table bench.workloads",
        "bench.sweep": "bench.harness bench.processes bench.results bench.sweep_table",
        "bench.sweep_table": "bench.harness bench.results",
        "bench.midrun": "bench.contenders bench.harness bench.processes bench.verify",
        "bench.harness": "bench.baselines bench.contenders bench.processes bench.profiling "
        "bench.results bench.verify bench.workloads",
        "bench.contenders": "bench.baselines bench.processes",
        "bench.processes": "",
        "bench.verify": "bench.baselines bench.processes bench.results protocol",
        "bench.results": "bench.contenders",
        "bench.output": "bench.contenders bench.results",
        "bench.profiling": "",
        "bench.baselines": "",
        "bench.workloads": "",
    }.items()
}

#: What the emulator may import from the uploader's side.
#: The emulator is a second program: it shares the wire contract and the errors, the garbage
#: collector's tuning for a long run of small requests, and the policy for small-file I/O on
#: the event loop (no behaviour of the uploader).
EMULATOR_MAY_IMPORT = frozenset({"protocol", "errors", "collector", "inline_io"})


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(path: Path) -> set[str]:
    """The modules of ours `path` imports, as ROOMS names (`from bulkdrive import x` and
    `from bulkdrive.pkg import x` name the submodule x when there is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level or not (node.module + ".").startswith("bulkdrive."):
                assert not node.level, f"{path.name}: relative import"
                continue
            base = node.module.removeprefix("bulkdrive").lstrip(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                submodule = PACKAGE.joinpath(*candidate.split("."))
                if submodule.with_suffix(".py").is_file() or submodule.is_dir():
                    found.add(candidate)
                elif base:
                    found.add(base)
                else:
                    found.add("__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if (alias.name + ".").startswith("bulkdrive."):
                    found.add(alias.name.removeprefix("bulkdrive").lstrip(".") or "__init__")
    return found


def test_every_module_has_a_room() -> None:
    missing = sorted(name for name, _ in _modules() if name not in ROOMS)
    assert not missing, f"add these modules to ROOMS in {Path(__file__).name}: {missing}"


def test_every_import_follows_an_allowed_arrow() -> None:
    wrong: list[str] = []
    for name, path in _modules():
        allowed = ROOMS.get(name, frozenset()) | LEAVES | {name}
        wrong += [f"{name} → {target}" for target in sorted(_imports(path) - allowed)]
    assert not wrong, "imports outside the table:\n" + "\n".join(wrong)


def test_the_arrows_point_one_way() -> None:
    """No cycle in the table: a room never reaches itself again through its imports."""
    state: dict[str, str] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "cycle: " + " → ".join((*trail, name))
        state[name] = "open"
        for target in sorted(ROOMS.get(name, frozenset())):
            visit(target, (*trail, name))
        state[name] = "done"

    for name in ROOMS:
        visit(name, ())
    for leaf in LEAVES:
        assert ROOMS[leaf] <= {"protocol"} and ROOMS["protocol"] == frozenset(), leaf


def test_the_emulator_imports_only_the_wire_contract_the_errors_and_the_collector() -> None:
    for name, allowed in ROOMS.items():
        if name == "emulator" or name.startswith("emulator."):
            outside = {a for a in allowed | LEAVES if not a.startswith("emulator")}
            # config is a leaf for the uploader; the emulator has its own config room.
            assert outside - {"config"} <= EMULATOR_MAY_IMPORT, name
    for name, path in _modules():
        if name == "emulator" or name.startswith("emulator."):
            outside = {i for i in _imports(path) if not i.startswith("emulator")}
            assert outside <= EMULATOR_MAY_IMPORT, f"{name} imports {outside}"


def test_nothing_of_the_uploader_imports_the_emulator_but_the_target() -> None:
    users = sorted(
        name
        for name, path in _modules()
        if not name.startswith("emulator")
        and any(i == "emulator" or i.startswith("emulator.") for i in _imports(path))
    )
    # The job's target is the embedded emulator when no URL is given; `serve` loads it lazily.
    assert users == ["target"]

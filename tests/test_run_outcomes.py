"""A batch's completed files accounted in one pass (`RunOutcomes.completed_many`, the
`--cluster` coordinator's way) read exactly as each file accounted on its own (`succeeded`,
`finish`): journal records, tally, progress, `--report-files` lines, log lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import NamedTuple, cast

import pytest

from bulkdrive.file_events import EventSinks, FileEvents, RunCounters
from bulkdrive.journal import Journal
from bulkdrive.outcomes import Done, RunOutcomes
from bulkdrive.progress import NullReporter
from bulkdrive.remote_folders import RemotePaths
from bulkdrive.report import FileOutcome, FileReportWriter, RunTally
from bulkdrive.upload import UploadResult
from bulkdrive.walk import FileEntry

pytestmark = pytest.mark.anyio


class Result(NamedTuple):
    file_guid: str
    attempts: int
    resumes: int
    integrity_verified: bool


class Recorder(NullReporter):
    def __init__(self) -> None:
        self.finished: list[FileOutcome] = []

    def file_finished(self, outcome: FileOutcome) -> None:
        self.finished.append(outcome)


async def _save(write: Awaitable[None]) -> None:
    await write


FILES = [
    (FileEntry("/src/a.bin", "a.bin", 10, 1), Result("g-a", 1, 0, True), 10),
    (FileEntry("/src/d/b.bin", "d/b.bin", 300, 2), Result("g-b", 3, 1, False), 100),
    (FileEntry("/src/d/e/c", "d/e/c", 0, 3), Result("g-c", 1, 0, False), 0),
]


async def _account(tmp_path: Path, name: str, together: bool) -> dict[str, object]:
    paths = RemotePaths("\\dest")
    tally, counters, reporter = RunTally(), RunCounters(), Recorder()
    writer = FileReportWriter(tmp_path / f"{name}.ndjson")
    async with Journal.open(tmp_path / f"{name}.sqlite") as journal:
        outcomes = RunOutcomes(
            paths=paths,
            tally=tally,
            reporter=reporter,
            counters=counters,
            journal=journal,
            file_report=writer,
            save=_save,
        )
        if together:
            done: list[Done] = [(e, r, sent, paths.path_of(e.relative)) for e, r, sent in FILES]
            await outcomes.completed_many(done, 0.5)
        else:
            sinks = EventSinks(counters, tally, reporter, journal)
            for entry, result, sent in FILES:
                events = FileEvents(sinks, entry)
                events.accepted = sent
                uploaded = cast(UploadResult, result)  # what an outcome reads of one
                outcomes.finish(await outcomes.succeeded(entry, uploaded, events, 0.5))
        await journal.flush()
        records = {
            e.relative: record[:10] + record[12:]
            for e, _, _ in FILES
            if (record := journal.lookup(e.relative)) is not None
        }
    writer.close()
    summary = tally.summary(1.0)
    return {
        "records": records,
        "files": summary.files,
        "bytes": summary.bytes,
        "done": counters.files_done,
        "told": reporter.finished,
        "lines": [json.loads(line) for line in writer.path.read_text().splitlines()],
    }


async def test_a_batch_accounted_together_reads_as_each_file_accounted_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="bulkdrive.run"):
        alone = await _account(tmp_path, "alone", together=False)
        alone_log = [r.getMessage() for r in caplog.records]
        caplog.clear()
        together = await _account(tmp_path, "together", together=True)
        together_log = [r.getMessage() for r in caplog.records]
    assert together == alone
    assert together_log == alone_log and len(together_log) == len(FILES)
    assert len(alone["records"]) == len(FILES)  # type: ignore[arg-type]
    assert alone["done"] == len(FILES)
    assert [o.outcome.value for o in together["told"]] == ["uploaded", "resumed", "uploaded"]  # type: ignore[attr-defined]

"""One file's upload events, carried to the reporter, the tally, the journal and the counters
`--transfers auto` measures."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bulkdrive import errors
from bulkdrive.config import LARGE_FILE
from bulkdrive.journal import FileState, Journal
from bulkdrive.progress import Reporter
from bulkdrive.report import RunTally
from bulkdrive.resume import journal_record
from bulkdrive.walk import FileEntry

log = logging.getLogger("bulkdrive.run")

#: Block digests (bytes) below which the journal gets them after every block.
DIGESTS_COPIED_EACH_BLOCK = 64 * 32


@dataclass
class RunCounters:
    """What the run's files did so far, as `--transfers auto` measures it."""

    #: Bytes the server confirmed (each increment, also of files that restart later).
    bytes_confirmed: int = 0
    files_done: int = 0
    #: Files handed to a transfer, and those of them of `LARGE_FILE` bytes or more.
    files_started: int = 0
    large_started: int = 0


@dataclass(frozen=True)
class EventSinks:
    """Where the events of the run's files go."""

    counters: RunCounters
    tally: RunTally
    reporter: Reporter
    journal: Journal | None


class FileEvents:
    """Carries one upload's progress to the reporter, the tally and the journal."""

    def __init__(self, sinks: EventSinks, entry: FileEntry) -> None:
        self._sinks = sinks
        self._entry = entry
        counters = sinks.counters
        counters.files_started += 1
        if entry.size >= LARGE_FILE:
            counters.large_started += 1
        self._relative = entry.relative
        self.request_id: str | None = None
        self.offset = 0
        self.attempts = 1
        self._digests = bytearray()  # 32 bytes per 4 MiB block the server holds
        self.digests = b""  # what the journal gets: all of it, at longer intervals past 2 KiB
        #: Bytes the server accepted from this run: each rise of its offset (after a restart,
        #: which starts over from 0, the whole new offset), not what an earlier run left.
        self.accepted = 0
        self._server_offset = 0
        self._heard = False

    def _server_at(self, offset: int) -> None:
        rise = offset - self._server_offset
        self.accepted += rise if rise > 0 else offset if rise < 0 else 0
        self._server_offset = offset
        self._heard = True

    def completed(self) -> None:
        """The server holds the whole file (its last reply need not carry an offset)."""
        self._server_at(self._entry.size)

    def confirmed_more(self, n: int) -> None:
        # The reporter follows offsets, which also go back when a file restarts; the tuner
        # counts what the server confirmed.
        self._sinks.counters.bytes_confirmed += n

    def offset_confirmed(self, request_id: str, offset: int) -> None:
        self._server_at(offset)
        self.request_id, self.offset = request_id, offset
        self._sinks.reporter.bytes_done(self._relative, offset)
        journal = self._sinks.journal
        if journal is not None and offset < self._entry.size:
            journal.note(
                journal_record(
                    self._entry,
                    FileState.PARTIAL,
                    request_id=request_id,
                    offset=offset,
                    digests=self.digests,
                    attempts=self.attempts,
                )
            )

    def retrying(self, error: errors.BulkdriveError, attempt: int, wait: float) -> None:
        self.attempts = attempt + 1
        log.warning("retrying %s in %.1fs (attempt %d): %s", self._relative, wait, attempt, error)
        self._sinks.tally.retried()
        self._sinks.reporter.file_retrying(self._relative, str(error), attempt, wait)

    def block_confirmed(self, index: int, digest: bytes) -> None:
        del self._digests[index * 32 :]
        self._digests += digest
        size = len(self._digests)
        # A copy per block while small; past 64 blocks one per 64, so that a huge file's
        # digests are not copied once per chunk (quadratic) for the journal.
        if size <= DIGESTS_COPIED_EACH_BLOCK or size % DIGESTS_COPIED_EACH_BLOCK == 0:
            self.digests = bytes(self._digests)

    def resumed(self, offset: int) -> None:
        if not self._heard:  # the session was left by an earlier run: not sent now
            self._server_offset = offset
        self._sinks.tally.resumed()
        self._sinks.reporter.file_resumed(self._relative, offset)

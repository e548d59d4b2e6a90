"""`--cluster`: a worker's report of one file, replayed into the coordinator's accounting as
if the upload had run here: the same events in the same order (resumes, offsets, retries,
block digests), then the same end (the report itself as the file's result, or its error as
the class it was)."""

from __future__ import annotations

from bulkdrive import errors
from bulkdrive.cluster_wire import FileReport
from bulkdrive.upload import UploadEvents


def _rebuild(name: str, message: str) -> Exception:
    """A worker's error, as the class it was (an unknown name: a bug, reported as such)."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.BulkdriveError):
        return cls(message)
    return RuntimeError(message)


def replay(report: FileReport, events: UploadEvents, size: int) -> FileReport:
    """Tell the run what the worker's upload of this file went through, in order, then end
    it as the worker's did: its report (what the run's outcome and journal record need of a
    result), or its error raised here."""
    if report.digests:
        # All blocks at once: the journal's records of this file carry the last digests.
        events.block_confirmed(0, report.digests)
    for event in report.events:
        kind = event[0]
        if kind == "resumed":
            events.resumed(event[1])
        elif kind == "offset":
            events.offset_confirmed(report.request_id or "", event[1])
        elif kind == "retrying":
            error = _rebuild(event[1], event[2])
            if isinstance(error, errors.BulkdriveError):
                events.retrying(error, event[3], event[4])
    if not report.ok:
        raise _rebuild(report.error_class, report.error_message)
    if report.already_there:
        # Completed by a worker that died before it could say so: nothing sent now.
        events.resumed(size)
    return report

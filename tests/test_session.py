"""The upload state machine (bulkdrive.session), event by event, without a server.

`TABLE` below is spec §8 as rows: a state the upload can be in, what came back for the
request it sent, and the state that follows (or the error that ends the file). Sizes are in
MiB; the file is 12 MiB (2 MiB for the one-request file); `R` is this upload's session, `X`
another writer's, `N` a new one.

Reading the next-state column: `SEND R@8` continues session R at 8 MiB; `RESTART` starts
over at 0 with forceRestart; `?8` marks a request of unknown outcome ending at 8 MiB;
`raise Kind` fails the file; `, retry` means the driver re-raises the error for the backoff
and the next attempt starts from the state shown.

The rows that keep another writer's bytes out (issue 11 §2):
- `recover after busy | 409 R request end | RESTART`: after a definite refusal (409 busy),
  an offset past the confirmed one is not ours, even where our refused chunk would have
  ended. Compare `recover lost chunk | 409 R request end | SEND R@8`: there the outcome was
  unknown, so that offset is exactly our chunk.
- `send | 200 elsewhere | RESTART`: a reply that does not end where our chunk ended.
- `initiate | 409 X at 4 | WAIT X@4`: a session this upload never saw, holding bytes, is
  another writer's (only an earlier run of this job, `resume …` from the journal, makes such
  bytes ours). Neither continued nor discarded at once: wait, CHECK whether the file is
  complete, then look again: `recover watching X@4 | 409 X at 8 | WAIT X@8` (it moves: a
  live writer), `… | 409 X at 4 | RESTART` (it did not: left behind, discard it).
- `recover lost final | 409 X at 0 | CHECK X@0`: the final request may have completed the
  file and a lost RECOVER opened X: look at the file before sending it again (§5).
"""

from __future__ import annotations

import pytest

from bulkdrive import errors
from bulkdrive.protocol import FileResource, UploadReply
from bulkdrive.session import (
    LEFT_BEHIND_AFTER,
    MAX_RESTARTS,
    NO_REQUEST,
    Phase,
    ResumePoint,
    SessionState,
    checked,
    chunk_sent,
    failed,
    initiated,
    opened,
    recovered,
    restarted,
    sending,
    waited,
)

MiB = 1024 * 1024
SIZE = 12 * MiB
SMALL = 2 * MiB
MTIME = 1_700_000_000
#: The driver's clock, long after any watch of another writer's session began.
LATER = 1000.0

STARTS: dict[str, SessionState] = {
    "initiate": sending(opened(SIZE), 4 * MiB, final=False),
    "initiate whole": sending(opened(SMALL), SMALL, final=True),
    "initiate forced": sending(
        opened(SIZE)._replace(force_restart=True, restarts=1), 4 * MiB, final=False
    ),
    "send": sending(
        SessionState(Phase.SEND, SIZE, request_id="R", offset=4 * MiB), 8 * MiB, final=False
    ),
    "send final": sending(
        SessionState(Phase.SEND, SIZE, request_id="R", offset=8 * MiB), SIZE, final=True
    ),
    "recover lost chunk": SessionState(
        Phase.RECOVER, SIZE, request_id="R", offset=4 * MiB, pending_end=8 * MiB
    ),
    "recover lost final": SessionState(
        Phase.RECOVER,
        SIZE,
        request_id="R",
        offset=8 * MiB,
        pending_end=SIZE,
        pending_final=True,
    ),
    "recover lost initiate": SessionState(Phase.RECOVER, SIZE, pending_end=4 * MiB),
    "recover after busy": SessionState(Phase.RECOVER, SIZE, request_id="R", offset=4 * MiB),
    "resume R@4": opened(SIZE, ResumePoint("R", 4 * MiB)),
    "resume no id": opened(SIZE, ResumePoint("")),
    # Waited for writer X, seen at 4 MiB, and found the file incomplete: look again.
    "recover watching X@4": SessionState(Phase.RECOVER, SIZE, watching="X", watched_at=4 * MiB),
}


def _reply(state: SessionState, event: str) -> UploadReply | None:
    mine = state.request_id or "R"
    end = state.pending_end if state.pending_end != NO_REQUEST else 8 * MiB
    replies = {
        "200 request end": UploadReply(state.request_id or "N", end),
        "200 complete": UploadReply(state.request_id or "N", state.size, file_guid="G"),
        "200 new at 0": UploadReply("N", 0),
        "200 elsewhere": UploadReply(mine, 6 * MiB),
        "409 R confirmed": UploadReply(mine, state.offset, error_code=409),
        "409 R request end": UploadReply(mine, end, error_code=409),
        "409 R beyond": UploadReply(mine, 10 * MiB, error_code=409),
        "409 R past size": UploadReply(mine, state.size + 1, error_code=409),
        "409 X at 0": UploadReply("X", 0, error_code=409),
        "409 X at 4": UploadReply("X", 4 * MiB, error_code=409),
        "409 X at 8": UploadReply("X", 8 * MiB, error_code=409),
    }
    return replies.get(event)


def _error(state: SessionState, event: str) -> errors.BulkdriveError:
    in_session = state.phase is Phase.SEND
    return {
        "400": errors.Rejected("HTTP 400"),
        "401": errors.TokenExpired("HTTP 401"),
        "403": errors.PermissionDenied("HTTP 403"),
        "404": errors.SessionGone("HTTP 404") if in_session else errors.FolderNotFound("HTTP 404"),
        "409 busy": errors.SessionBusy("HTTP 409: still receiving"),
        "413": errors.QuotaExceeded("HTTP 413"),
        "500": errors.ServerBusy("HTTP 500", status=500),
        "503": errors.ServerBusy("HTTP 503", status=503),
        "lost": errors.NetworkError("connection closed"),
        "integrity": errors.IntegrityMismatch("HTTP 400: file integrity check failed"),
    }[event]


REPLIES = (
    "200 request end",
    "200 complete",
    "200 new at 0",
    "200 elsewhere",
    "409 R confirmed",
    "409 R request end",
    "409 R beyond",
    "409 R past size",
    "409 X at 0",
    "409 X at 4",
    "409 X at 8",
)
ERRORS = ("400", "401", "403", "404", "409 busy", "413", "500", "503", "lost", "integrity")


def _mib(n: int) -> str:
    return str(n // MiB) if n % MiB == 0 else f"{n / MiB:.2f}"


def describe(state: SessionState) -> str:
    if state.phase is Phase.DONE:
        return "DONE"
    if state.phase is Phase.INITIATE and state.force_restart:
        return "RESTART"
    if state.phase is Phase.WAIT:
        return f"WAIT {state.watching}@{_mib(state.watched_at)}"
    text = state.phase.name
    if state.request_id or state.offset:
        text += f" {state.request_id or '-'}@{_mib(state.offset)}"
    if state.pending_end != NO_REQUEST:
        text += f" ?{_mib(state.pending_end)}{'F' if state.pending_final else ''}"
    return text


def step(start: str, event: str) -> str:
    """What follows `event` in state `start`, as `describe` writes it."""
    state = STARTS[start]
    reply = _reply(state, event)
    try:
        if reply is not None:
            if state.phase is Phase.INITIATE:
                after = initiated(state, reply, now=LATER)
            elif state.phase is Phase.SEND:
                after = chunk_sent(state, reply)
            else:
                after = recovered(state, reply, now=LATER)
        else:
            error = _error(state, event)
            after = failed(state, error)
            if error.retryable:
                return f"{describe(after)}, retry"
    except errors.BulkdriveError as exc:
        return f"raise {type(exc).__name__}"
    return describe(after)


TABLE = """
state                 | reply             | next
--------------------- | ----------------- | ----
initiate              | 200 request end   | SEND N@4
initiate              | 200 new at 0      | RESTART
initiate              | 200 elsewhere     | RESTART
initiate              | 409 R confirmed   | SEND R@0
initiate              | 409 R request end | WAIT R@4
initiate              | 409 R beyond      | WAIT R@10
initiate              | 409 R past size   | RESTART
initiate              | 409 X at 0        | SEND X@0
initiate              | 409 X at 4        | WAIT X@4
initiate              | 409 X at 8        | WAIT X@8
initiate              | 400               | raise Rejected
initiate              | 401               | RECOVER ?4, retry
initiate              | 403               | raise PermissionDenied
initiate              | 404               | raise FolderNotFound
initiate              | 409 busy          | RECOVER, retry
initiate              | 413               | raise QuotaExceeded
initiate              | 500               | RECOVER ?4, retry
initiate              | 503               | RECOVER ?4, retry
initiate              | lost              | RECOVER ?4, retry
initiate              | integrity         | RESTART
initiate whole        | 200 request end   | DONE
initiate whole        | 200 complete      | DONE
initiate whole        | 200 new at 0      | RESTART
initiate whole        | 200 elsewhere     | RESTART
initiate whole        | 409 R confirmed   | SEND R@0
initiate whole        | 409 R request end | WAIT R@2
initiate whole        | 409 R beyond      | RESTART
initiate whole        | 409 R past size   | RESTART
initiate whole        | 409 X at 0        | SEND X@0
initiate whole        | 409 X at 4        | RESTART
initiate whole        | 409 X at 8        | RESTART
initiate whole        | 400               | raise Rejected
initiate whole        | 401               | CHECK ?2F, retry
initiate whole        | 403               | raise PermissionDenied
initiate whole        | 404               | raise FolderNotFound
initiate whole        | 409 busy          | RECOVER, retry
initiate whole        | 413               | raise QuotaExceeded
initiate whole        | 500               | CHECK ?2F, retry
initiate whole        | 503               | CHECK ?2F, retry
initiate whole        | lost              | CHECK ?2F, retry
initiate whole        | integrity         | RESTART
initiate forced       | 200 request end   | SEND N@4
initiate forced       | 200 new at 0      | RESTART
initiate forced       | 200 elsewhere     | RESTART
initiate forced       | 409 R confirmed   | SEND R@0
initiate forced       | 409 R request end | WAIT R@4
initiate forced       | 409 R beyond      | WAIT R@10
initiate forced       | 409 R past size   | RESTART
initiate forced       | 409 X at 0        | SEND X@0
initiate forced       | 409 X at 4        | WAIT X@4
initiate forced       | 409 X at 8        | WAIT X@8
initiate forced       | 400               | raise Rejected
initiate forced       | 401               | RESTART, retry
initiate forced       | 403               | raise PermissionDenied
initiate forced       | 404               | raise FolderNotFound
initiate forced       | 409 busy          | RESTART, retry
initiate forced       | 413               | raise QuotaExceeded
initiate forced       | 500               | RESTART, retry
initiate forced       | 503               | RESTART, retry
initiate forced       | lost              | RESTART, retry
initiate forced       | integrity         | RESTART
send                  | 200 request end   | SEND R@8
send                  | 200 elsewhere     | RESTART
send                  | 400               | raise Rejected
send                  | 401               | RECOVER R@4 ?8, retry
send                  | 403               | raise PermissionDenied
send                  | 404               | CHECK
send                  | 409 busy          | RECOVER R@4, retry
send                  | 413               | raise QuotaExceeded
send                  | 500               | RECOVER R@4 ?8, retry
send                  | 503               | RECOVER R@4 ?8, retry
send                  | lost              | RECOVER R@4 ?8, retry
send                  | integrity         | RESTART
send final            | 200 request end   | DONE
send final            | 200 complete      | DONE
send final            | 200 elsewhere     | RESTART
send final            | 400               | raise Rejected
send final            | 401               | RECOVER R@8 ?12F, retry
send final            | 403               | raise PermissionDenied
send final            | 404               | CHECK
send final            | 409 busy          | RECOVER R@8, retry
send final            | 413               | raise QuotaExceeded
send final            | 500               | RECOVER R@8 ?12F, retry
send final            | 503               | RECOVER R@8 ?12F, retry
send final            | lost              | RECOVER R@8 ?12F, retry
send final            | integrity         | RESTART
recover lost chunk    | 200 new at 0      | SEND N@0
recover lost chunk    | 200 elsewhere     | RESTART
recover lost chunk    | 409 R confirmed   | SEND R@4
recover lost chunk    | 409 R request end | SEND R@8
recover lost chunk    | 409 R beyond      | RESTART
recover lost chunk    | 409 R past size   | RESTART
recover lost chunk    | 409 X at 0        | SEND X@0
recover lost chunk    | 409 X at 4        | WAIT X@4
recover lost chunk    | 409 X at 8        | WAIT X@8
recover lost chunk    | 400               | raise Rejected
recover lost chunk    | 401               | RECOVER R@4 ?8, retry
recover lost chunk    | 403               | raise PermissionDenied
recover lost chunk    | 404               | raise FolderNotFound
recover lost chunk    | 409 busy          | RECOVER R@4, retry
recover lost chunk    | 413               | raise QuotaExceeded
recover lost chunk    | 500               | RECOVER R@4 ?8, retry
recover lost chunk    | 503               | RECOVER R@4 ?8, retry
recover lost chunk    | lost              | RECOVER R@4 ?8, retry
recover lost chunk    | integrity         | RESTART
recover lost final    | 200 new at 0      | CHECK N@0
recover lost final    | 200 elsewhere     | RESTART
recover lost final    | 409 R confirmed   | SEND R@8
recover lost final    | 409 R request end | SEND R@12
recover lost final    | 409 R beyond      | CHECK
recover lost final    | 409 R past size   | RESTART
recover lost final    | 409 X at 0        | CHECK X@0
recover lost final    | 409 X at 4        | WAIT X@4
recover lost final    | 409 X at 8        | WAIT X@8
recover lost final    | 400               | raise Rejected
recover lost final    | 401               | RECOVER R@8 ?12F, retry
recover lost final    | 403               | raise PermissionDenied
recover lost final    | 404               | raise FolderNotFound
recover lost final    | 409 busy          | RECOVER R@8, retry
recover lost final    | 413               | raise QuotaExceeded
recover lost final    | 500               | RECOVER R@8 ?12F, retry
recover lost final    | 503               | RECOVER R@8 ?12F, retry
recover lost final    | lost              | RECOVER R@8 ?12F, retry
recover lost final    | integrity         | RESTART
recover lost initiate | 200 new at 0      | SEND N@0
recover lost initiate | 200 elsewhere     | RESTART
recover lost initiate | 409 R confirmed   | SEND R@0
recover lost initiate | 409 R request end | SEND R@4
recover lost initiate | 409 R beyond      | WAIT R@10
recover lost initiate | 409 R past size   | RESTART
recover lost initiate | 409 X at 0        | SEND X@0
recover lost initiate | 409 X at 4        | SEND X@4
recover lost initiate | 409 X at 8        | WAIT X@8
recover lost initiate | 400               | raise Rejected
recover lost initiate | 401               | RECOVER ?4, retry
recover lost initiate | 403               | raise PermissionDenied
recover lost initiate | 404               | raise FolderNotFound
recover lost initiate | 409 busy          | RECOVER, retry
recover lost initiate | 413               | raise QuotaExceeded
recover lost initiate | 500               | RECOVER ?4, retry
recover lost initiate | 503               | RECOVER ?4, retry
recover lost initiate | lost              | RECOVER ?4, retry
recover lost initiate | integrity         | RESTART
recover after busy    | 200 new at 0      | SEND N@0
recover after busy    | 200 elsewhere     | RESTART
recover after busy    | 409 R confirmed   | SEND R@4
recover after busy    | 409 R request end | RESTART
recover after busy    | 409 R beyond      | RESTART
recover after busy    | 409 R past size   | RESTART
recover after busy    | 409 X at 0        | SEND X@0
recover after busy    | 409 X at 4        | WAIT X@4
recover after busy    | 409 X at 8        | WAIT X@8
recover after busy    | 400               | raise Rejected
recover after busy    | 401               | RECOVER R@4, retry
recover after busy    | 403               | raise PermissionDenied
recover after busy    | 404               | raise FolderNotFound
recover after busy    | 409 busy          | RECOVER R@4, retry
recover after busy    | 413               | raise QuotaExceeded
recover after busy    | 500               | RECOVER R@4, retry
recover after busy    | 503               | RECOVER R@4, retry
recover after busy    | lost              | RECOVER R@4, retry
recover after busy    | integrity         | RESTART
resume R@4            | 200 new at 0      | SEND N@0
resume R@4            | 200 elsewhere     | RESTART
resume R@4            | 409 R confirmed   | SEND R@4
resume R@4            | 409 R request end | SEND R@8
resume R@4            | 409 R beyond      | SEND R@10
resume R@4            | 409 R past size   | RESTART
resume R@4            | 409 X at 0        | SEND X@0
resume R@4            | 409 X at 4        | WAIT X@4
resume R@4            | 409 X at 8        | WAIT X@8
resume R@4            | 400               | RESTART
resume R@4            | 401               | RECOVER R@4, retry
resume R@4            | 403               | raise PermissionDenied
resume R@4            | 404               | raise FolderNotFound
resume R@4            | 409 busy          | RECOVER R@4, retry
resume R@4            | 413               | raise QuotaExceeded
resume R@4            | 500               | RECOVER R@4, retry
resume R@4            | 503               | RECOVER R@4, retry
resume R@4            | lost              | RECOVER R@4, retry
resume R@4            | integrity         | RESTART
resume no id          | 200 new at 0      | SEND N@0
resume no id          | 200 elsewhere     | RESTART
resume no id          | 409 R confirmed   | SEND R@0
resume no id          | 409 R request end | SEND R@8
resume no id          | 409 R beyond      | SEND R@10
resume no id          | 409 R past size   | RESTART
resume no id          | 409 X at 0        | SEND X@0
resume no id          | 409 X at 4        | SEND X@4
resume no id          | 409 X at 8        | SEND X@8
resume no id          | 400               | RESTART
resume no id          | 401               | RECOVER, retry
resume no id          | 403               | raise PermissionDenied
resume no id          | 404               | raise FolderNotFound
resume no id          | 409 busy          | RECOVER, retry
resume no id          | 413               | raise QuotaExceeded
resume no id          | 500               | RECOVER, retry
resume no id          | 503               | RECOVER, retry
resume no id          | lost              | RECOVER, retry
resume no id          | integrity         | RESTART
recover watching X@4  | 200 new at 0      | CHECK N@0
recover watching X@4  | 200 elsewhere     | RESTART
recover watching X@4  | 409 R confirmed   | SEND R@0
recover watching X@4  | 409 R request end | WAIT R@8
recover watching X@4  | 409 R beyond      | WAIT R@10
recover watching X@4  | 409 R past size   | RESTART
recover watching X@4  | 409 X at 0        | SEND X@0
recover watching X@4  | 409 X at 4        | RESTART
recover watching X@4  | 409 X at 8        | WAIT X@8
recover watching X@4  | 400               | raise Rejected
recover watching X@4  | 401               | RECOVER, retry
recover watching X@4  | 403               | raise PermissionDenied
recover watching X@4  | 404               | raise FolderNotFound
recover watching X@4  | 409 busy          | RECOVER, retry
recover watching X@4  | 413               | raise QuotaExceeded
recover watching X@4  | 500               | RECOVER, retry
recover watching X@4  | 503               | RECOVER, retry
recover watching X@4  | lost              | RECOVER, retry
recover watching X@4  | integrity         | RESTART
"""


def _rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in TABLE.strip().splitlines()[2:]:
        start, event, expected = (cell.strip() for cell in line.split("|"))
        rows.append((start, event, expected))
    return rows


@pytest.mark.parametrize(("start", "event", "expected"), _rows())
def test_transition_table(start: str, event: str, expected: str) -> None:
    assert step(start, event) == expected


def test_the_table_covers_every_state_and_every_reply() -> None:
    covered = {(start, event) for start, event, _ in _rows()}
    for start, state in STARTS.items():
        for event in ERRORS:
            assert (start, event) in covered
        for event in REPLIES:
            reply = _reply(state, event)
            if reply is None:
                continue
            assert (start, event) in covered or not _meaningful(state, event), (start, event)


def _meaningful(state: SessionState, event: str) -> bool:
    """Replies a server can give: a 200 to a RECOVER opens an empty session, a 200 with a
    fileGUID answers only a final request, a 409 answers only an initiate."""
    if event == "200 complete":
        return state.pending_final and state.phase is not Phase.RECOVER
    if event.startswith("409"):
        return state.phase in (Phase.INITIATE, Phase.RECOVER)
    if state.phase is Phase.RECOVER:
        return event == "200 new at 0" or event == "200 elsewhere"
    return event != "200 new at 0" or state.phase is Phase.INITIATE


# --- CHECK: the remote file's properties after a lost final request or a vanished session ---


def _resource(size: int, mtime: int = MTIME, *, directory: bool = False) -> FileResource:
    return FileResource("f", "\\f", directory, size=size, modified_time=mtime, guid="G")


@pytest.mark.parametrize(
    ("state", "resource", "expected"),
    [
        (SessionState(Phase.CHECK, SIZE), _resource(SIZE), "DONE"),
        (SessionState(Phase.CHECK, SIZE), None, "INITIATE"),
        (SessionState(Phase.CHECK, SIZE), _resource(SIZE - 1), "INITIATE"),
        (SessionState(Phase.CHECK, SIZE), _resource(SIZE, MTIME - 1), "INITIATE"),
        (SessionState(Phase.CHECK, SIZE), _resource(SIZE, directory=True), "INITIATE"),
        # The empty session a lost RECOVER opened is continued from 0 when the file is not there.
        (SessionState(Phase.CHECK, SIZE, request_id="X"), None, "SEND X@0"),
        (SessionState(Phase.CHECK, SIZE, request_id="X"), _resource(SIZE), "DONE"),
    ],
)
def test_check(state: SessionState, resource: FileResource | None, expected: str) -> None:
    assert describe(checked(state, resource, mtime=MTIME)) == expected


def test_a_lost_final_and_a_lost_recover_never_commit_twice() -> None:
    """§5: the final chunk's reply is lost, then the RECOVER's: the file is looked at (and
    found complete) instead of being sent again into the session that RECOVER opened."""
    state = failed(STARTS["send final"], errors.NetworkError("lost"))
    state = failed(state, errors.NetworkError("lost again"))  # the RECOVER's reply
    assert describe(state) == "RECOVER R@8 ?12F"
    state = recovered(state, UploadReply("N", 0, error_code=409), now=LATER)
    assert describe(state) == "CHECK N@0"
    assert checked(state, _resource(SIZE), mtime=MTIME).phase is Phase.DONE


def test_fresh_starts_are_bounded() -> None:
    state = STARTS["send"]
    for _ in range(MAX_RESTARTS):
        state = restarted(state, "foreign bytes")
    with pytest.raises(errors.IntegrityMismatch, match="after 2 fresh starts"):
        restarted(state, "foreign bytes")
    gone = STARTS["send"]._replace(restarts=MAX_RESTARTS)
    with pytest.raises(errors.SessionGone):
        failed(gone, errors.SessionGone("HTTP 404"))


def test_a_resume_asks_with_an_empty_initiate() -> None:
    """Issue 17: the journal knows the file was in flight, so the server probably holds a
    session of it, and a first chunk sent with the initiate would be thrown away."""
    assert opened(SIZE).phase is Phase.INITIATE
    resumed = opened(SIZE, ResumePoint("R", 4 * MiB))
    assert (resumed.phase, resumed.request_id, resumed.offset) == (Phase.RECOVER, "R", 4 * MiB)
    unnamed = opened(SIZE, ResumePoint(""))
    assert (unnamed.phase, unnamed.request_id, unnamed.offset) == (Phase.RECOVER, "", 0)


def test_restart_keeps_counts_and_forgets_the_session() -> None:
    state = STARTS["send"]._replace(resumes=1, file_guid="", adopted=True)
    fresh = restarted(state, "why")
    assert (fresh.phase, fresh.request_id, fresh.offset, fresh.force_restart) == (
        Phase.INITIATE,
        "",
        0,
        True,
    )
    assert (fresh.resumes, fresh.restarts, fresh.adopted) == (1, 1, False)


def test_two_writers_converge_by_waiting() -> None:
    """Another writer's session X holds bytes: wait, look at the file, look at X again. X
    moved on: wait again. The file is then complete: done, nothing of ours was sent."""
    state = initiated(STARTS["initiate"], UploadReply("X", 4 * MiB, error_code=409), now=0.0)
    assert describe(state) == "WAIT X@4"
    state = waited(state)
    assert describe(state) == "CHECK"
    state = checked(state, None, mtime=MTIME)
    assert describe(state) == "RECOVER"
    state = recovered(state, UploadReply("X", 8 * MiB, error_code=409), now=0.1)
    assert (describe(state), state.watched_bytes) == ("WAIT X@8", 4 * MiB)  # its progress
    state = checked(waited(state), _resource(SIZE), mtime=MTIME)
    assert state.phase is Phase.DONE and state.restarts == 0


def test_a_session_that_stands_still_briefly_is_not_left_behind() -> None:
    """Flaky under load before: a live writer paused between two chunks for longer than one
    backoff wait (a millisecond with full jitter), and the other writer discarded its session.
    Now a session is left behind only after LEFT_BEHIND_AFTER seconds without moving; each
    look before that counts as the wait's progress (so the retry budget is not spent on it)."""
    state = initiated(STARTS["initiate"], UploadReply("X", 4 * MiB, error_code=409), now=10.0)
    looks = []
    for now in (10.001, 10.5, 10.0 + LEFT_BEHIND_AFTER - 0.001):
        state = checked(waited(state), None, mtime=MTIME)
        state = recovered(state, UploadReply("X", 4 * MiB, error_code=409), now=now)
        looks.append((describe(state), state.watched_looks))
    assert looks == [("WAIT X@4", 1), ("WAIT X@4", 2), ("WAIT X@4", 3)]
    state = checked(waited(state), None, mtime=MTIME)
    # It moved: the window starts again from this look.
    state = recovered(state, UploadReply("X", 8 * MiB, error_code=409), now=11.5)
    assert (describe(state), state.watched_since) == ("WAIT X@8", 11.5)
    state = checked(waited(state), None, mtime=MTIME)
    state = recovered(
        state, UploadReply("X", 8 * MiB, error_code=409), now=11.5 + LEFT_BEHIND_AFTER
    )
    assert (state.phase, state.force_restart, state.restarts) == (Phase.INITIATE, True, 1)

"""One file's upload session as a pure state machine: spec §4–§8, no I/O, no clock.

The driver (`bulkdrive.upload`) calls `sending` before each request that carries bytes, then
one transition with what came back: `initiated`, `chunk_sent`, `recovered` (a reply) or
`failed` (an error), and `checked` with the remote file's properties. Each returns the next
state or raises the error that ends the file. tests/test_session.py walks the whole table.

The rules that keep wrong bytes out (§8):

- A request whose outcome is unknown is never sent again: ask the server (RECOVER, an
  initiate with no body, no requestId, no forceRestart) and continue from its offset.
- The server's offset is ours up to `offset`, the last one a reply confirmed to this upload.
  Beyond it, an offset is ours only when it equals the end of a request whose outcome is
  unknown (`pending_end`). After a definite refusal (a 409 "busy", a 409 on an initiate), or
  when the offset lands anywhere else, the bytes are another writer's: start over with
  forceRestart. A 200 must report exactly the end of the request it answers.
- A session an earlier run of this job left (the journal's `ResumePoint`) may hold more than
  the journal saw confirmed (the requests in flight at a kill, of unknown outcome): any
  offset of that session is its own, and so is any session of the file when the journal saw
  the file start but not its session's id. The driver then checks the prefix against the
  local file (and the journal's block digests) before going on.
- A session this upload never saw holding bytes is another writer's: WAIT (back off), see
  whether the file is complete (CHECK), then look at the session again; one that did not
  move for LEFT_BEHIND_AFTER seconds (the driver's clock, handed in as `now`) is left behind
  and discarded (forceRestart). Two writers so converge: one finishes,
  the other finds the file complete. An empty session (offset 0) holds nobody's bytes and
  is taken over.
- A lost request that carried the last byte, or a session that vanished (404), may mean the
  file is complete: CHECK its properties before sending anything again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from bulkdrive import errors
from bulkdrive.protocol import FileResource, UploadReply

__all__ = [
    "LEFT_BEHIND_AFTER",
    "MAX_RESTARTS",
    "Phase",
    "ResumePoint",
    "SessionState",
    "checked",
    "chunk_sent",
    "failed",
    "initiated",
    "opened",
    "recovered",
    "restarted",
    "sending",
    "waited",
]

#: Fresh sessions (forceRestart, or a vanished session) before the file fails.
MAX_RESTARTS = 2

#: Seconds another writer's session must stand still before it counts as left behind. A live
#: writer pauses between its chunks (reading, hashing, a loaded CPU): judged by one backoff
#: wait, which full jitter can make a millisecond, a live session was discarded under load.
LEFT_BEHIND_AFTER = 1.0

#: `pending_end` when no request is in flight or of unknown outcome.
NO_REQUEST = -1


class Phase(enum.Enum):
    """What the upload does next.

    INITIATE ──200──▶ SEND ──final 200──▶ DONE
      │  ▲  └──409──────▲│
      │  └── restart ───┼┤ (integrity failure, foreign bytes, offset past the end)
      ▼                 │▼
    (outcome unknown) ─▶ RECOVER ──409 or 200──▶ SEND
                          └──200 after a lost final request──▶ CHECK ──complete──▶ DONE
    """

    INITIATE = "initiate"  # open a session with the first chunk (forceRestart when restarting)
    SEND = "send"  # send the chunk at `offset` to session `request_id`
    RECOVER = "recover"  # an initiate with no body, no requestId, no forceRestart: the offset
    CHECK = "check"  # is the remote file complete already? (metadata)
    WAIT = "wait"  # another writer's session holds bytes: back off, then look again
    DONE = "done"


# Read as module names on each small file's path: on Python 3.11 an enum member read through
# its class costs ~0.1 µs (EnumType's __getattr__ puts every class attribute lookup of an
# enum on a slow path), and a small file read 15 of them.
_INITIATE, _SEND, _DONE = Phase.INITIATE, Phase.SEND, Phase.DONE


@dataclass(frozen=True)
class ResumePoint:
    """What an earlier run of this job knew of this very file (the journal's record): it
    was in flight, in session `request_id` ("" when its id never reached the journal)
    confirmed up to `offset`."""

    request_id: str
    offset: int = 0


class SessionState(NamedTuple):
    """Where one file's upload stands. Immutable: each transition returns a new one.

    A NamedTuple rather than a frozen dataclass: a small file goes through three states, and
    building or replacing a frozen dataclass of these 16 fields costs about four times as
    much (benchmarks/README.md, "Per-file CPU")."""

    phase: Phase
    size: int
    request_id: str = ""
    offset: int = 0  # the server holds our bytes up to here (confirmed): the next chunk starts
    force_restart: bool = False  # the next initiate discards what the server holds
    adopted: bool = False  # a session this upload did not open: a 400 may mean other bytes
    earlier_run: bool = False  # the journal's session: its offset may be past `offset`
    pending_end: int = NO_REQUEST  # where the request in flight, or of unknown outcome, ends
    pending_final: bool = False  # that request carried FileEOF
    watching: str = ""  # another writer's session, holding bytes, that this upload waits for
    watched_at: int = 0  # its offset when last seen
    watched_bytes: int = 0  # how far it moved while watched: the other writer's progress
    watched_since: float = 0.0  # when it was last seen to move (the driver's clock)
    watched_looks: int = (
        0  # looks that found it still, within LEFT_BEHIND_AFTER: the wait's progress
    )
    file_guid: str = ""
    integrity_verified: bool = False
    resumes: int = 0
    restarts: int = 0


def opened(size: int, resume: ResumePoint | None = None) -> SessionState:
    """The first state: initiate with the first chunk, or, when the journal knows a session
    of this file, ask the server for it with an empty body (the first chunk is thrown away on
    a 409, so sending it would waste a chunk of bandwidth per resumed file)."""
    if resume is None:
        return SessionState(_INITIATE, size)
    return SessionState(
        Phase.RECOVER,
        size,
        request_id=resume.request_id,
        offset=min(resume.offset, size),
        adopted=True,
        earlier_run=True,
    )


def sending(state: SessionState, end: int, *, final: bool) -> SessionState:
    """A request carrying the file's bytes up to `end` goes out."""
    # Built over slices, not with `_replace` (a Python pass over every field's name), once
    # per request: `pending_end` and `pending_final` are fields 7 and 8 (checked below).
    return SessionState._make((*state[:7], end, final, *state[9:]))


assert SessionState._fields[7:9] == ("pending_end", "pending_final")


def restarted(state: SessionState, reason: str) -> SessionState:
    """Start over at offset 0 with forceRestart, discarding the server's bytes."""
    if state.restarts >= MAX_RESTARTS:
        raise errors.IntegrityMismatch(f"{reason} (after {state.restarts} fresh starts)")
    return SessionState(
        Phase.INITIATE,
        state.size,
        force_restart=True,
        resumes=state.resumes,
        restarts=state.restarts + 1,
    )


def _done_or_sending(
    state: SessionState, reply: UploadReply, request_id: str, *, adopted: bool
) -> SessionState:
    """A 200 that confirmed exactly the request in flight."""
    done = bool(reply.file_guid) or (state.pending_final and reply.chunk_offset == state.size)
    return SessionState(
        _DONE if done else _SEND,
        state.size,
        request_id=request_id,
        offset=reply.chunk_offset,
        adopted=adopted,
        file_guid=reply.file_guid or "",
        integrity_verified=reply.integrity_verified,
        resumes=state.resumes,
        restarts=state.restarts,
    )


def initiated(state: SessionState, reply: UploadReply, *, now: float) -> SessionState:
    """The reply to an INITIATE that carried the first chunk: a new session holding exactly
    that chunk (200), or an unfinished session found instead, the body not applied (409).
    `now` is the driver's clock (seconds), for how long another writer's session stood still."""
    if reply.error_code == 409:
        return _found(state, reply, unknown_end=NO_REQUEST, now=now)
    if reply.chunk_offset != state.pending_end:
        return restarted(
            state,
            f"a new session holds {reply.chunk_offset} bytes after a first request of "
            f"{state.pending_end}",
        )
    return _done_or_sending(state, reply, reply.request_id, adopted=False)


def chunk_sent(state: SessionState, reply: UploadReply) -> SessionState:
    """The 200 to a chunk: the session must now end where that chunk ended."""
    if reply.chunk_offset != state.pending_end:
        return restarted(
            state,
            f"session {state.request_id} holds {reply.chunk_offset} bytes where this upload's "
            f"chunk ended at {state.pending_end}: another writer's bytes",
        )
    return _done_or_sending(state, reply, state.request_id, adopted=state.adopted)


def recovered(state: SessionState, reply: UploadReply, *, now: float) -> SessionState:
    """The reply to the RECOVER initiate (empty body); `now` as for `initiated`."""
    if reply.error_code == 409:
        return _found(state, reply, unknown_end=state.pending_end, now=now)
    # 200: no unfinished session remained (it completed, expired or was discarded); the
    # server opened a new, empty one.
    if reply.chunk_offset != 0:
        return restarted(state, f"a new session holds {reply.chunk_offset} bytes of nobody's")
    # After a lost final request, or while another writer's session was watched, the file
    # may be complete: look before sending it again.
    fresh = SessionState(
        Phase.CHECK if state.pending_final or state.watching else Phase.SEND,
        state.size,
        request_id=reply.request_id,
        resumes=state.resumes,
        restarts=state.restarts,
    )
    return fresh


def _found(
    state: SessionState, reply: UploadReply, *, unknown_end: int, now: float
) -> SessionState:
    """A 409 names the file's unfinished session and its offset (our body was not applied).

    `unknown_end` is where a request of unknown outcome ended: the one offset past the
    confirmed one that can be ours."""
    found, at = reply.request_id, reply.chunk_offset
    if at > state.size:
        return restarted(state, f"the server holds {at} bytes of a file of {state.size}")
    same = found == state.request_id
    # A lost initiate may have opened the session we did not hear of.
    may_be_lost_initiate = not state.request_id and unknown_end > 0
    ours = (
        (same and at <= state.offset)
        or (state.earlier_run and (same or not state.request_id))
        or (at == unknown_end and (same or may_be_lost_initiate))
        or at == 0
    )
    if not ours and not same and found:
        return _other_writer(state, found, at, now)
    if not ours:
        if state.pending_final and unknown_end != NO_REQUEST:
            # Our last request may have completed the file and a lost RECOVER opened this
            # session: look before sending anything again.
            return SessionState(
                Phase.CHECK,
                state.size,
                resumes=state.resumes,
                restarts=state.restarts,
            )
        return restarted(
            state,
            f"session {found} holds {at} bytes that this upload did not send "
            f"(confirmed {state.offset if same else 0})",
        )
    if state.pending_final and unknown_end != NO_REQUEST and not same:
        # The final request's outcome is unknown and the session is another one: the file
        # may be complete (the session opened by a lost RECOVER). Look first.
        return SessionState(
            Phase.CHECK,
            state.size,
            request_id=found,
            offset=at,
            adopted=True,
            resumes=state.resumes,
            restarts=state.restarts,
        )
    return SessionState(
        Phase.SEND,
        state.size,
        request_id=found,
        offset=at,
        adopted=state.adopted or not same,
        resumes=state.resumes + (1 if at > 0 else 0),
        restarts=state.restarts,
    )


def _other_writer(state: SessionState, found: str, at: int, now: float) -> SessionState:
    """A session this upload did not open holds bytes: another writer's, live or left
    behind. Taking it over would mix its bytes with ours; discarding it (forceRestart) would
    break a live writer, who would then break ours. So wait, and look again: a session that
    moved on is live (the file may soon be complete); one that did not is left behind, and
    only then is it discarded."""
    if found == state.watching and at <= state.watched_at:
        if now - state.watched_since >= LEFT_BEHIND_AFTER:
            return restarted(state, f"session {found} stayed at {at} bytes: left behind")
        return state._replace(phase=Phase.WAIT, watched_looks=state.watched_looks + 1)
    moved = at - state.watched_at if found == state.watching else 0
    return SessionState(
        Phase.WAIT,
        state.size,
        watching=found,
        watched_at=at,
        watched_bytes=state.watched_bytes + moved,
        watched_since=now,
        watched_looks=state.watched_looks,
        resumes=state.resumes,
        restarts=state.restarts,
    )


def waited(state: SessionState) -> SessionState:
    """The wait for another writer is over: first see whether the file is complete."""
    return state._replace(phase=Phase.CHECK)


def failed(state: SessionState, error: errors.BulkdriveError) -> SessionState:
    """The request got `error` instead of a reply: the next state, or `error` raised when
    it ends the file (the driver re-raises retryable errors for the backoff)."""
    if isinstance(error, errors.SessionBusy):
        return _refused_busy(state)
    if isinstance(error, errors.OutcomeUnknown):
        return _outcome_unknown(state)
    if isinstance(error, errors.IntegrityMismatch):
        return restarted(state, str(error))
    if isinstance(error, errors.SessionGone) and state.phase is Phase.SEND:
        return _vanished(state, error)
    if isinstance(error, errors.Rejected) and state.adopted:
        # The session we found was for other bytes (another size, another version).
        return restarted(state, str(error))
    raise error


def _refused_busy(state: SessionState) -> SessionState:
    """A definite refusal: another request is being received on the session; ours was not
    applied. Whatever the session holds past `offset` then is another writer's."""
    cleared = state._replace(pending_end=NO_REQUEST, pending_final=False)
    if state.phase is Phase.SEND or (state.phase is Phase.INITIATE and not state.force_restart):
        return cleared._replace(phase=Phase.RECOVER)
    return cleared  # a forceRestart initiate must still discard; RECOVER, CHECK ask again


def _outcome_unknown(state: SessionState) -> SessionState:
    """The request in flight may or may not have been applied (§8)."""
    if state.phase is Phase.INITIATE:
        if state.pending_final:
            # The whole file travelled in that initiate: it either completed or did nothing.
            return state._replace(phase=Phase.CHECK, request_id="", offset=0)
        if state.force_restart:
            return state  # a forceRestart initiate discards whatever the lost one did
        return state._replace(phase=Phase.RECOVER)
    if state.phase is Phase.SEND:
        return state._replace(phase=Phase.RECOVER)
    return state  # RECOVER and CHECK only ask: ask again


def _vanished(state: SessionState, error: errors.SessionGone) -> SessionState:
    """404 for our session: completed, expired, or discarded by another writer's
    forceRestart. Look at the remote file before starting over (another writer may have
    stored it); a vanished session counts as a fresh start."""
    if state.restarts >= MAX_RESTARTS:
        raise error
    return SessionState(
        Phase.CHECK,
        state.size,
        resumes=state.resumes,
        restarts=state.restarts + 1,
    )


def checked(state: SessionState, resource: FileResource | None, *, mtime: int) -> SessionState:
    """The remote file's properties: complete (same size and modified time) or not."""
    complete = (
        resource is not None
        and not resource.is_directory
        and resource.size == state.size
        and resource.modified_time == mtime
    )
    if complete and resource is not None:
        return state._replace(
            phase=Phase.DONE,
            offset=state.size,
            file_guid=resource.guid,
            pending_end=NO_REQUEST,
            pending_final=False,
        )
    cleared = state._replace(pending_end=NO_REQUEST, pending_final=False)
    if state.request_id and state.offset == 0:
        return cleared._replace(phase=Phase.SEND)  # the empty session a RECOVER opened
    if state.watching:
        return cleared._replace(phase=Phase.RECOVER)  # has the other writer moved on?
    return SessionState(
        Phase.INITIATE,
        state.size,
        resumes=state.resumes,
        restarts=state.restarts,
    )

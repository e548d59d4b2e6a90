"""What the emulator's store refuses, by type: each reason with the HTTP status and the
errorString it is answered with, chosen here and nowhere else. Handlers test the reason
(`exc.why is Why.INTEGRITY`), never the words of a message."""

from __future__ import annotations

import enum

#: The refusal of an initiate while the file's session is receiving a request: no requestId,
#: since its offset is about to change (a 409 that offers no session to resume).
BUSY_SESSION = "the unfinished session of this file is still receiving a request; try again"


class Why(enum.Enum):
    """A reason, as (status, errorString); `{detail}` is filled in by StoreError. 404 texts
    never name the path: a client can then read a 404's words without a path's words in
    them."""

    FILE_IN_PATH = (400, "a component of the path is a file, not a folder")
    INVALID_PATH = (400, "invalid path: {detail}")
    LINK_IN_PATH = (400, "the path goes through a symbolic link, which is refused")
    LEAVES_SHARE = (400, "the path leaves the share")
    NOT_A_FOLDER = (400, "{detail} is a file, not a folder")
    IS_A_FOLDER = (400, "{detail} is a folder")
    NO_PARENT = (404, "the parent folder does not exist (this server does not create folders)")
    NOTHING_THERE = (404, "no file or folder at this path")
    NO_FOLDER = (404, "no folder at this path")
    EXISTS = (409, "a file or folder with this name exists already")
    SESSION_BUSY = (409, BUSY_SESSION)
    SESSION_EXISTS = (409, "an unfinished upload session exists for this file")
    INTEGRITY = (400, "file integrity check failed")
    PAST_FILE_SIZE = (400, "the body would take the file past its FileSize")
    EOF_SIZE_DIFFERS = (400, "FileEOF is 1 but the total differs from FileSize")
    BODY_TOO_LARGE = (413, "the body is larger than the largest accepted request")
    QUOTA = (413, "the quota of {detail} bytes would be exceeded")
    DISK_FULL = (413, "the server's disk is full")
    RECORD_FULL = (413, "the server could not record the upload: {detail}")
    WRITE_FAILED = (500, "the server could not write the file: {detail}")
    RECORD_FAILED = (500, "the server could not record the upload: {detail}")

    @property
    def status(self) -> int:
        return self.value[0]


class StoreError(Exception):
    """A refusal of the store: its reason, the status and errorString the reason maps to;
    409s carry the session's requestId and offset."""

    def __init__(
        self,
        why: Why,
        detail: object = "",
        *,
        request_id: str = "",
        chunk_offset: int | None = None,
    ) -> None:
        status, text = why.value
        message = text.format(detail=detail)
        super().__init__(message)
        self.why = why
        self.status: int = status
        self.message: str = message
        self.request_id = request_id
        self.chunk_offset = chunk_offset


class BodyIncomplete(Exception):
    """The request body ended before Content-Length (connection lost): nothing was stored."""

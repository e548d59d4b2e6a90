"""The emulator's refusals: what its store and handlers raise when a request cannot be served,
with the HTTP status it gets."""

from __future__ import annotations

# 404 messages never name the path: clients tell an unknown share from a missing folder by
# the word "share" in the message (protocol.error_for), and a path may contain that word.
NO_PARENT = "the parent folder does not exist (this server does not create folders)"


NOTHING_THERE = "no file or folder at this path"


NO_FOLDER = "no folder at this path"


#: The refusal of an initiate while the file's session is receiving a request: no requestId,
#: since its offset is about to change (a 409 that offers no session to resume).
BUSY_SESSION = "the unfinished session of this file is still receiving a request; try again"


class StoreError(Exception):
    """A refusal with its HTTP status; 409s carry the session's requestId and offset."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        request_id: str = "",
        chunk_offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.request_id = request_id
        self.chunk_offset = chunk_offset


class BodyIncomplete(Exception):
    """The request body ended before Content-Length (connection lost): nothing was stored."""

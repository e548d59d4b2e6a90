"""What the server's error replies mean, as bulkdrive errors: the client's side of the wire
boundary (the emulator shares `protocol`, not this). Edge Drive gives a status and an
errorString, without a code per cause, so where one status has several causes (404, 413,
400) the errorString's words are all there is to go by; those readings live here only.
"""

from __future__ import annotations

import re

from bulkdrive import errors
from bulkdrive.protocol import TRANSIENT_STATUSES, Node, short_text

_REFUSED_NAME = re.compile(r"not allowed|invalid|illegal|reserved")
_QUOTA_WORDS = ("quota", "space", "storage", "capacity", "full")
_SIZE_WORDS = ("larger", "too large", "too big", "size limit", "length", "request body", "entity")


def _too_large(node: Node, message: str) -> errors.BulkdriveError:
    """The two 413s of spec §4, told apart by the errorString: the share's quota, or a request
    body over the server's limit. A 413 without the API's errorString comes from the web server
    in front of the API, which knows nothing of quotas: a body over its limit."""
    said = (node.get("errorString") or node.get("errorMessage") or "").lower()
    if any(word in said for word in _QUOTA_WORDS):
        return errors.QuotaExceeded(f"{message} (the share's quota)", status=413)
    if not said or any(word in said for word in _SIZE_WORDS):
        return errors.RequestTooLarge(
            f"{message} (a request is larger than the server accepts)", status=413
        )
    return errors.QuotaExceeded(message, status=413)


def error_for(
    status: int,
    node: Node,
    *,
    what: str,
    in_session: bool = False,
    retry_after: float | None = None,
) -> errors.BulkdriveError:
    """The error that a non-success status stands for. `what` names the request for people."""
    server_says = short_text(
        node.get("errorString") or node.get("errorMessage") or node.text or "no message"
    )
    message = f"{what}: HTTP {status}: {server_says}"
    if status == 401:
        return errors.TokenExpired(message, status=status)
    if status == 403:
        return errors.PermissionDenied(message, status=status)
    if status == 404:
        if in_session:
            return errors.SessionGone(message, status=status)
        # An upload or folder request names its share in the path: a 404 that says "share"
        # is about the share (spec §4: unknown share), any other about the path in it.
        if "share" in server_says.lower():
            return errors.ShareNotFound(message, status=status)
        return errors.FolderNotFound(message, status=status)
    if status == 409:
        return errors.SessionBusy(message, chunk_offset=node.int("chunkOffset", 0))
    if status == 413:
        return _too_large(node, message)
    if status in TRANSIENT_STATUSES:
        return errors.ServerBusy(message, status=status, retry_after=retry_after)
    lowered = server_says.lower()
    if status == 400 and "integrity" in lowered:
        return errors.IntegrityMismatch(message, status=status)
    if status == 400 and "name" in lowered and _REFUSED_NAME.search(lowered):
        return errors.NameRefused(message, status=status)
    return errors.Rejected(message, status=status)

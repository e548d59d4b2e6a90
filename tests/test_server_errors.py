"""The client's reading of the server's error replies: status and errorString → error type.
The emulator's own refusals are typed (emulator/refusals.py); these are the words a real server
answers with, as the spec gives them."""

from __future__ import annotations

import pytest

from bulkdrive import errors
from bulkdrive.protocol import Node
from bulkdrive.server_errors import error_for


def said(text: str, **fields: str) -> Node:
    return Node(fields={"errorString": text, **fields}) if text else Node(fields=fields)


@pytest.mark.parametrize(
    ("status", "node", "in_session", "expected"),
    [
        (401, said("token expired"), False, errors.TokenExpired),
        (403, said("view-only"), False, errors.PermissionDenied),
        (404, said("share 7 does not exist"), False, errors.ShareNotFound),
        (404, said("the parent folder does not exist"), False, errors.FolderNotFound),
        (404, said("no such requestId"), True, errors.SessionGone),
        (409, said("busy", chunkOffset="8"), True, errors.SessionBusy),
        (413, said("the quota of 10 bytes would be exceeded"), False, errors.QuotaExceeded),
        (
            413,
            said("the body is larger than the largest accepted request"),
            False,
            errors.RequestTooLarge,
        ),
        (413, said(""), False, errors.RequestTooLarge),  # the web server in front, no API body
        (503, said("server busy"), True, errors.ServerBusy),
        (500, said("boom"), True, errors.ServerBusy),
        (400, said("file integrity check failed"), True, errors.IntegrityMismatch),
        (400, said("the name is not allowed here"), False, errors.NameRefused),
        (400, said("FileSize is not a number"), False, errors.Rejected),
    ],
)
def test_a_reply_becomes_the_error_its_status_and_words_stand_for(
    status: int, node: Node, in_session: bool, expected: type[errors.BulkdriveError]
) -> None:
    error = error_for(status, node, what="upload a.bin", in_session=in_session)
    assert type(error) is expected
    assert str(error).startswith(f"upload a.bin: HTTP {status}")

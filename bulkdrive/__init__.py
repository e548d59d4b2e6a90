"""bulkdrive: bulk uploads to Commvault Edge Drive through chunked upload sessions.

The library API, for programs that upload without the CLI::

    from bulkdrive import Credentials, EdgeDriveClient, Secret, upload_file, upload_tree

    async with EdgeDriveClient.connect(url, Credentials("alice", Secret(pw)), share_id="12") as c:
        result = await upload_file(c, Path("report.pdf"), "\\\\reports")   # one file
        summary = await upload_tree(c, Path("photos"), "\\\\pictures")    # a whole tree

Names are loaded on first use, so that importing one part (the emulator, say) does not import
the rest.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bulkdrive.client import EdgeDriveClient
    from bulkdrive.config import Credentials, RetryPolicy, Secret, Timeouts, TransferConfig
    from bulkdrive.errors import BulkdriveError
    from bulkdrive.report import RunSummary
    from bulkdrive.scheduler import upload_tree
    from bulkdrive.upload import UploadResult, upload_file
    from bulkdrive.walk import WalkFilters

__all__ = [
    "BulkdriveError",
    "Credentials",
    "EdgeDriveClient",
    "RetryPolicy",
    "RunSummary",
    "Secret",
    "Timeouts",
    "TransferConfig",
    "UploadResult",
    "WalkFilters",
    "upload_file",
    "upload_tree",
]

_HOMES = {
    "BulkdriveError": "bulkdrive.errors",
    "Credentials": "bulkdrive.config",
    "EdgeDriveClient": "bulkdrive.client",
    "RetryPolicy": "bulkdrive.config",
    "RunSummary": "bulkdrive.report",
    "Secret": "bulkdrive.config",
    "Timeouts": "bulkdrive.config",
    "TransferConfig": "bulkdrive.config",
    "UploadResult": "bulkdrive.upload",
    "WalkFilters": "bulkdrive.walk",
    "upload_file": "bulkdrive.upload",
    "upload_tree": "bulkdrive.scheduler",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'bulkdrive' has no attribute {name!r}")
    return getattr(_importlib.import_module(home), name)


# The namespace holds the public names only (pinned by tests/test_api.py).
del TYPE_CHECKING, annotations

"""bulkdrive: bulk uploads to Commvault Edge Drive through chunked upload sessions."""

from bulkdrive.errors import BulkdriveError

__all__ = ["BulkdriveError"]

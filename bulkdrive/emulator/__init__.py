"""The Edge Drive emulator: `bulkdrive serve`, and the server every test talks to."""

from bulkdrive.emulator.app import (
    Emulator,
    EmulatorConfig,
    EmulatorStatistics,
    Share,
    UploadRecord,
    User,
    running_emulator,
)

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "EmulatorStatistics",
    "Share",
    "UploadRecord",
    "User",
    "running_emulator",
]

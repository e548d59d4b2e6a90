"""The Edge Drive emulator: `bulkdrive serve`, and the server every test talks to."""

from bulkdrive.emulator.app import Emulator, EmulatorStatistics, running_emulator
from bulkdrive.emulator.config import EmulatorConfig, Share, User
from bulkdrive.emulator.wire import UploadRecord

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "EmulatorStatistics",
    "Share",
    "UploadRecord",
    "User",
    "running_emulator",
]

"""Every error bulkdrive raises, in one tree.

Each class says who is at fault and what happens next: whether the failed request may be
retried (after the recovery of spec §8), whether only this file fails or the whole run stops,
and the exit code the CLI ends with.

    BulkdriveError                  base: .scope, .retryable, .exit_code, .hint
    ├── ConfigError                 bad flag, config key or input            run,  exit 2
    │   ├── ReportUnwritable        --report cannot be written there
    │   └── JournalInUse            another run holds the job's journal
    ├── OutcomeUnknown              the request may or may not have applied  retry (§8)
    │   ├── NetworkError            connection refused, reset or closed
    │   ├── RequestTimeout          no answer in time
    │   ├── ServerBusy              408, 429, 500, 502, 503, 504 (+ Retry-After)
    │   ├── TokenExpired            401: renew the token, then recover
    │   └── SessionBusy             409 on a chunk: another writer on the session
    ├── FileFailed                  this file fails, the others go on        file, exit 1
    │   ├── Rejected                400 and other refusals of this request
    │   │   └── NameRefused         400: the server does not accept the name
    │   ├── IntegrityMismatch       the server's bytes are not this file's
    │   ├── SessionGone             404 for a requestId (completed, expired, restarted)
    │   ├── FolderNotFound          404 for a parent folder (strict servers)
    │   ├── SourceChanged           the local file changed while it was sent
    │   ├── SourceUnreadable        the local file cannot be read
    │   ├── UnreadableFolder        a folder of SRC cannot be read (or vanished)
    │   ├── InvalidName             a name that is not UTF-8, under --invalid-names fail
    │   ├── FolderNotCreated        the file's remote folder could not be created
    │   └── RetriesExhausted        transient failures outlasted the retry policy
    └── RunFailed                   nothing more can succeed: stop the run
        ├── LoginFailed             wrong user or password, or a refused token  exit 3
        ├── PermissionDenied        403                                       exit 3
        ├── ShareNotFound           404 for the share                         exit 3
        ├── QuotaExceeded           413: the share's quota would be exceeded  exit 4
        ├── RequestTooLarge         413: a request is over the server's limit exit 2
        ├── NotEdgeDrive            the URL answers, but not as Edge Drive    exit 2
        ├── ServerUnreachable       no connection: refused, DNS, TLS handshake exit 5
        │   ├── ServerFailing       every upload failed for --give-up-after s  exit 5
        │   └── CertificateRejected TLS verification failed                   exit 5
        └── JournalFailed           the resume journal cannot be written      exit 1

Foreign exceptions (aiohttp, OSError) are translated into this tree at exactly one boundary:
`bulkdrive.client` for the network and `bulkdrive.source` for local files.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Scope = Literal["request", "file", "run"]

# The documented exit codes of `bulkdrive upload` (README, "Exit codes").
EXIT_OK = 0
EXIT_FILES_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_QUOTA = 4
EXIT_UNREACHABLE = 5
EXIT_INTERRUPTED = 130


class BulkdriveError(Exception):
    """Base of every bulkdrive error. `str(err)` is a one-line message for people."""

    scope: ClassVar[Scope] = "file"
    retryable: ClassVar[bool] = False
    exit_code: ClassVar[int] = 1
    hint: ClassVar[str] = ""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


class ConfigError(BulkdriveError):
    scope = "run"
    exit_code = EXIT_USAGE
    hint = "fix the option or config key named in the message"


class ReportUnwritable(ConfigError):
    """--report names a place no report can be written: the one exit that writes none."""


class JournalInUse(ConfigError):
    hint = "wait for the other run to finish, or pass another --journal PATH"


# --- the outcome of a request is unknown: recover as spec §8 says, then go on -----------------


class OutcomeUnknown(BulkdriveError):
    scope = "request"
    retryable = True
    hint = "transient; bulkdrive retries and resumes from the server's offset"

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class NetworkError(OutcomeUnknown):
    pass


class RequestTimeout(OutcomeUnknown):
    pass


class ServerBusy(OutcomeUnknown):
    pass


class TokenExpired(OutcomeUnknown):
    def __init__(self, message: str, *, status: int | None = 401, replaced: bool = False) -> None:
        super().__init__(message, status=status)
        #: Sent with a token another request had already replaced: send again with the new
        #: one, without counting an attempt or waiting.
        self.replaced = replaced


class SessionBusy(OutcomeUnknown):
    def __init__(self, message: str, *, status: int | None = 409, chunk_offset: int = 0) -> None:
        super().__init__(message, status=status)
        self.chunk_offset = chunk_offset


# --- this file fails; the run goes on -----------------------------------------------------


class FileFailed(BulkdriveError):
    scope = "file"
    exit_code = 1
    hint = "re-run the same command to retry the failed files"


class Rejected(FileFailed):
    hint = "the server refused this file; check its name, size and the server's message"


class NameRefused(Rejected):
    hint = (
        'the server does not accept this name (Windows rules: no <>:"|?* or control '
        "characters, no trailing dot or space, no CON, NUL, COM1...); rename it or --exclude it"
    )


class IntegrityMismatch(FileFailed):
    hint = "re-run; bulkdrive restarts the file from offset 0"


class SessionGone(FileFailed):
    hint = "re-run; the upload starts a new session"


class FolderNotFound(FileFailed):
    hint = "create the remote folder, or check --to"


class SourceChanged(FileFailed):
    hint = "the file was being written while uploaded; re-run once it is stable"


class SourceUnreadable(FileFailed):
    hint = "check that the file exists and is readable"


class UnreadableFolder(FileFailed):
    hint = "its files were not uploaded: give read access to the folder (or --exclude it), re-run"


class Vanished(UnreadableFolder):
    hint = "it was removed or renamed while the tree was read; re-run to upload what is there now"


class InvalidName(FileFailed):
    hint = (
        "rename it to valid UTF-8 (e.g. with convmv), or use --invalid-names escape to store it "
        "under an escaped name"
    )


class FolderNotCreated(FileFailed):
    """The file's remote folder could not be created; `folder_hint` is what to do about it."""

    hint = "fix what kept its folder from being created (see the reason) and re-run"

    def __init__(self, message: str, *, folder_hint: str = "") -> None:
        super().__init__(message)
        self.folder_hint = folder_hint or self.hint


class RetriesExhausted(FileFailed):
    hint = "the server or network kept failing; re-run later or raise --retries"


# --- stop the run ------------------------------------------------------------------------


class RunFailed(BulkdriveError):
    scope = "run"
    exit_code = EXIT_AUTH


class LoginFailed(RunFailed):
    hint = "check the user name and password (BULKDRIVE_PASSWORD, --password-file) or token"


class PermissionDenied(RunFailed):
    hint = "ask for upload permission on this share, or pick another share"


class ShareNotFound(RunFailed):
    hint = "check --share; `GET drive/share` lists the shares you can use"


class QuotaExceeded(RunFailed):
    exit_code = EXIT_QUOTA
    hint = "free space on the share or ask for a larger quota"


class RequestTooLarge(RunFailed):
    exit_code = EXIT_USAGE
    hint = "pass a smaller --chunk-size (with --no-verify), below the server's request limit"


URL_FORMS = (
    "https://HOST/webconsole/api, https://HOST/commandcenter/api "
    "or http://HOST:81/SearchSvc/CVWebService.svc"
)


class NotEdgeDrive(RunFailed):
    exit_code = EXIT_USAGE
    hint = f"--url must be the Edge Drive web-service root: {URL_FORMS}"


class ServerUnreachable(RunFailed):
    exit_code = EXIT_UNREACHABLE
    hint = "check --url and that the server is up and reachable"


class ServerFailing(ServerUnreachable):
    hint = (
        "the server could not be reached (or answered 5xx) for the whole --give-up-after "
        "window; once it is back, re-run the same command: files resume where they stopped"
    )


class CertificateRejected(ServerUnreachable):
    hint = "trust the server's CA with --ca-bundle FILE, or turn checking off with --insecure"


class JournalFailed(RunFailed):
    exit_code = EXIT_FILES_FAILED
    hint = "check free space and permissions of the journal's folder, or pass --journal PATH"


def exit_code(
    *, run_error: BaseException | None = None, interrupted: bool = False, files_failed: int = 0
) -> int:
    """The exit code of a run, the one function that decides it for the process and for the
    `--report` alike: the error that stopped the run (its own code; 1 for an unexpected one),
    else 130 if the run was interrupted, else 1 if any file failed, else 0. The error comes
    first: a run stopped by a full share and then interrupted still needs the share freed."""
    if isinstance(run_error, BulkdriveError):
        return run_error.exit_code
    if run_error is not None and not isinstance(run_error, KeyboardInterrupt):
        return EXIT_FILES_FAILED
    if interrupted or isinstance(run_error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FILES_FAILED if files_failed else EXIT_OK


def alone(error: BaseException) -> BaseException:
    """The one error inside (nested) task-group wrappers, so that it is raised and reported as
    itself; a group of several errors is given back as it is."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error

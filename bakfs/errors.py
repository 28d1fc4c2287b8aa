"""The errors bakfs raises, all of them, as one tree so a caller sees at a glance what it can
catch.

    BakfsError                      anything bakfs reports to a user (message, no traceback)
    ├── ConfigError                 an option is missing, unknown or has a bad value
    ├── FormatError                 a Cinder JSON document or object is not what the format says
    │   ├── BadMetadata             `_metadata` / `_sha256file` unreadable or inconsistent
    │   └── UnsupportedCompression  a compression name Cinder does not know
    ├── IntegrityError              object bytes fail their length or md5 check
    ├── CacheDamaged                a chunk cache file fails its checksum (never served)
    ├── StoreError                  the object store could not do what was asked
    │   ├── StoreUnreachable        cannot reach the store (connection, DNS, timeout)
    │   └── StoreRefused            the store answered with an error
    │       ├── ObjectMissing       no such object (or bucket)
    │       ├── AccessDenied        credentials or SSE-C key refused
    │       ├── ChecksumMismatch    the store rejected an upload's Content-MD5 (BadDigest)
    │       └── AlreadyExists       a conditional put found the key already there
    ├── IndexCorrupt                the local index holds what it could not have written
    ├── BackupNotFound              no backup with that id in the store
    ├── VolumeBusy                  another writer holds the volume's lease (exit code 3)
    ├── LeaseLost                   our lease was taken over while we wrote
    ├── BackupFailed                a backup could not be completed; nothing was committed
    │   └── WriterKilled            the process writing into incoming/ died before the end
    ├── SourceError                 a backup's source cannot be read
    ├── TargetError                 a restore's target cannot be used or written
    ├── OutOfOrderWrite             a write into incoming/ that is not at the end so far
    ├── MountError                  a mount could not be made or undone
    │   └── AttachError             a backup could not be attached as a disk, or detached
    └── TsmError                    dsmc failed (rc and ANS messages attached)
        ├── TsmUnreachable          the TSM server cannot be reached (transient)
        ├── TsmAuthFailed           node or password refused
        ├── TsmNotFound             the object is not on the TSM server
        ├── TsmNoSpace              no space on the server or at the destination
        │   └── StagingNoSpace      the staging area cannot hold the backup now
        ├── TsmPrompted             dsmc asked a question; bakfs stopped it
        ├── TsmClientError          dsmc cannot run as configured
        ├── TsmFailed               any other failure of a dsmc operation
        ├── TsmSourceError          the source is not a block device or a regular file
        ├── TsmIntegrityError       restored bytes differ from the recorded size or sha256
        ├── StagingFailed           a read waited for a staging that failed (`cause` says why)
        └── StagingBusy             another process owns the staging directory

This module knows nothing of errno or FUSE: the FUSE adapter maps these to errno.
"""

from __future__ import annotations

from collections.abc import Sequence


class BakfsError(Exception):
    """An error with a message meant for the operator; the CLI prints it without a traceback."""

    exit_code = 1


class ConfigError(BakfsError):
    """A configuration value is missing, unknown or invalid."""

    exit_code = 2


class FormatError(BakfsError):
    """Data in the store does not follow the Cinder chunked backup format."""


class BadMetadata(FormatError):
    """A `_metadata` or `_sha256file` document cannot be used."""


class UnsupportedCompression(FormatError):
    """A compression algorithm name that Cinder does not define."""


class IntegrityError(BakfsError):
    """Object data whose length or md5 differs from what the metadata records."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class CacheDamaged(BakfsError):
    """A chunk cache file whose bytes fail their checksum: deleted and fetched again."""


class StoreError(BakfsError):
    """The object store failed; `key` names the object when there is one."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class StoreUnreachable(StoreError):
    """The store could not be reached (Cinder's S3ConnectionFailure)."""


class StoreRefused(StoreError):
    """The store answered, and refused (Cinder's S3ClientError)."""


class ObjectMissing(StoreRefused):
    """The object or bucket does not exist."""


class AccessDenied(StoreRefused):
    """Credentials, permissions or the SSE-C key were refused."""


class ChecksumMismatch(StoreRefused):
    """The store computed a different MD5 than the Content-MD5 we sent."""


class AlreadyExists(StoreRefused):
    """A put-if-absent found the key already present."""


class IndexCorrupt(BakfsError):
    """The local chunk index holds something it could not have written: rebuild it."""


class BackupNotFound(BakfsError):
    """No complete backup with the given id exists in the store."""


class VolumeBusy(BakfsError):
    """Another writer holds the volume's lease."""

    exit_code = 3


class LeaseLost(BakfsError):
    """Our lease was taken over (we were too slow to renew it)."""


class BackupFailed(BakfsError):
    """The backup could not be completed; nothing was committed."""


class WriterKilled(BackupFailed):
    """The process writing into incoming/ died before it finished."""


class SourceError(BakfsError):
    """The source of a backup cannot be read."""


class TargetError(BakfsError):
    """The restore target cannot be used or written."""


class OutOfOrderWrite(BakfsError):
    """A write into incoming/ that is not at the end of what was written so far."""


class MountError(BakfsError):
    """The mount could not be made or undone."""


class AttachError(MountError):
    """A backup could not be attached as a read-only disk (or detached): not a partitioned
    disk, already attached, a directory or device in use."""


class TsmError(BakfsError):
    """dsmc failed; `messages` are its ANS lines (never a password), `rc` its exit status
    (None when it was killed). `transient` says whether trying again later may succeed."""

    transient = False

    def __init__(self, message: str, *, rc: int | None = None,
                 messages: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.rc = rc
        self.messages = tuple(messages)


class TsmUnreachable(TsmError):
    """The TSM server could not be reached, or the session was lost (ANS1017E, ANS1809W,
    ANS0326E, ANS1330S, dsmc killed or timed out)."""

    transient = True


class TsmAuthFailed(TsmError):
    """The server refused our node or password (ANS1025E, ANS1051I, ANS1353E)."""


class TsmNotFound(TsmError):
    """The object is not on the TSM server (ANS1302E, ANS1092W, ANS1345E, ANS4000E)."""


class TsmNoSpace(TsmError):
    """No space: on the server (ANS1329S, ANS1311E) or at the destination (ANS4009E)."""


class StagingNoSpace(TsmNoSpace):
    """The staging area cannot hold the backup now (too small, or full of pinned or running
    stagings)."""


class TsmPrompted(TsmError):
    """dsmc asked a question on its terminal; bakfs stopped it (a configuration problem:
    a missing password, an existing destination, a missing -noprompt)."""


class TsmClientError(TsmError):
    """dsmc could not run as configured: binary missing, bad option, bad options file,
    no server stanza (ANS1107E, ANS1138E, ANS1217E, ANS1036S)."""


class TsmFailed(TsmError):
    """Any other failure of a dsmc operation (its ANS lines are in the message)."""


class TsmSourceError(TsmError):
    """The backup source is neither a block device nor a regular file, or cannot be read."""


class TsmIntegrityError(TsmError):
    """Restored bytes differ from what bakfs recorded at backup time (size or sha256)."""


class StagingFailed(TsmError):
    """A read could not be served because the backup's staging failed; `cause` says why."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class StagingBusy(TsmError):
    """Another process owns the staging directory."""

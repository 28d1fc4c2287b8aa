"""The errors bakfs raises, as one tree so a caller sees at a glance what it can catch.

    BakfsError                      anything bakfs reports to a user (message, no traceback)
    ├── ConfigError                 an option is missing, unknown or has a bad value
    ├── FormatError                 a Cinder JSON document or object is not what the format says
    │   ├── BadMetadata             `_metadata` / `_sha256file` unreadable or inconsistent
    │   └── UnsupportedCompression  a compression name Cinder does not know
    ├── IntegrityError              object bytes fail their length or md5 check
    ├── StoreError                  the object store could not do what was asked
    │   ├── StoreUnreachable        cannot reach the store (connection, DNS, timeout)
    │   └── StoreRefused            the store answered with an error
    │       ├── ObjectMissing       no such object (or bucket)
    │       ├── AccessDenied        credentials or SSE-C key refused
    │       ├── ChecksumMismatch    the store rejected an upload's Content-MD5 (BadDigest)
    │       └── AlreadyExists       a conditional put found the key already there
    ├── IndexCorrupt                the local index holds what it could not have written
    └── BackupNotFound              no backup with that id in the store

This module knows nothing of errno or FUSE: the FUSE adapter maps these to errno.
"""

from __future__ import annotations


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


class OutOfOrderWrite(BakfsError):
    """A write into incoming/ that is not at the end of what was written so far."""

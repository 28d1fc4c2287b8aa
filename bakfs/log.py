"""Logging for bakfs: one format, library loggers kept quiet, and secrets scrubbed.

botocore at DEBUG would print request headers, SSE-C key included, so its loggers stay at
WARNING unless asked for by name. As a second line of defence a filter replaces the value of
every configured secret in any record with `****`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from bakfs.config import Config, Secret

_NOISY = ("botocore", "boto3", "urllib3", "s3transfer")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactSecrets(logging.Filter):
    """Replace secret values that slipped into a log record."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        cleaned = message
        for secret in self.secrets:
            cleaned = cleaned.replace(secret, "****")
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_text:
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, "****")
        return True


def config_secrets(config: Config) -> list[str]:
    """The revealed values of every secret in the configuration."""
    values = []
    for section in (config.s3, config.local, config.tsm, config.cache, config.index):
        for value in vars(section).values():
            if isinstance(value, Secret):
                values.append(value.reveal())
    return values


def setup(level: int = logging.INFO, config: Config | None = None,
          debug_modules: Iterable[str] = ()) -> None:
    """Log to stderr at `level`; `debug_modules` (e.g. 'botocore') are let through at DEBUG."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactSecrets(config_secrets(config) if config else ()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    debug = set(debug_modules)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if name in debug else logging.WARNING)
    for name in debug - set(_NOISY):
        logging.getLogger(name).setLevel(logging.DEBUG)

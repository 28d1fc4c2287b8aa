"""Logging for bakfs: one format, library loggers kept quiet, and secrets scrubbed.

botocore at DEBUG would print request headers, SSE-C key included, so its loggers stay at
WARNING unless asked for by name. As a second line of defence every line, traceback
included, is scrubbed after it is formatted (`RedactSecrets`): each configured secret is
replaced by `****` in every form a library may print it in. The SSE-C key travels base64
encoded, with the base64 MD5 of the key beside it; a signature or URL may hold it
percent-encoded; a repr or JSON escapes it. `redact` scrubs any other text the same way
(the command line's error messages).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import sys
import urllib.parse
from collections.abc import Iterable

from bakfs.config import Config, Secret

_NOISY = ("botocore", "boto3", "urllib3", "s3transfer")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "****"
MIN_FORM = 4  # shorter forms would mask ordinary words


def secret_forms(secret: str) -> set[str]:
    """The texts under which `secret` may appear: itself; escaped as repr and JSON do; its
    bytes and their MD5 and SHA-256 digests as hex and as base64 (standard and URL-safe,
    with and without padding), each also percent-encoded."""
    raw = secret.encode("utf-8", "surrogateescape")
    forms = {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]}
    for data in (raw, hashlib.md5(raw, usedforsecurity=False).digest(),
                 hashlib.sha256(raw).digest()):
        forms |= {data.hex(), data.hex().upper()}
        for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
            text = encoded.decode("ascii")
            forms |= {text, text.rstrip("=")}
    forms |= {urllib.parse.quote(f, safe="") for f in list(forms)}
    forms |= {urllib.parse.quote_plus(f, safe="") for f in list(forms)}
    return {f for f in forms if len(f) >= MIN_FORM}


class RedactSecrets(logging.Formatter):
    """The log format, with every form of every secret replaced by `****` in the whole
    formatted line (message, arguments, traceback, stack)."""

    def __init__(self, secrets: Iterable[str], fmt: str = FORMAT) -> None:
        super().__init__(fmt)
        forms = sorted({f for s in secrets if s for f in secret_forms(s)}, key=len,
                       reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, forms))) if forms else None

    def redact(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(MASK, text)

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


_active = RedactSecrets(())


def redact(text: str) -> str:
    """`text` scrubbed of the secrets the last `setup` was given."""
    return _active.redact(text)


def config_secrets(config: Config) -> list[str]:
    """The revealed values of every secret in the configuration."""
    values = []
    for section in (config.s3, config.local, config.tsm, config.cache, config.index,
                    config.mount):
        for value in vars(section).values():
            if isinstance(value, Secret):
                values.append(value.reveal())
    return values


def setup(level: int = logging.INFO, config: Config | None = None,
          debug_modules: Iterable[str] = ()) -> None:
    """Log to stderr at `level`; `debug_modules` (e.g. 'botocore') are let through at DEBUG."""
    global _active
    _active = RedactSecrets(config_secrets(config) if config else ())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_active)
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

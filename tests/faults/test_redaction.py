"""Secrets never reach a log line, in any encoding (issue 14, item 9): botocore at DEBUG
prints the SSE-C key base64-encoded and its MD5 beside it; the log scrubs every form."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

from bakfs.log import RedactSecrets
from tests.conftest import S3Server

KEY = "Sse-C key: 32 bytes, not a word!"  # 32 bytes
assert len(KEY.encode()) == 32


def _forms(secret: str) -> list[str]:
    raw = secret.encode()
    b64 = base64.b64encode(raw).decode()
    md5 = base64.b64encode(hashlib.md5(raw).digest()).decode()
    return [secret, b64, md5, urllib.parse.quote(b64, safe=""), raw.hex(),
            hashlib.md5(raw).hexdigest(), base64.urlsafe_b64encode(raw).decode().rstrip("=")]


def test_every_encoding_of_a_secret_is_masked_in_lines_and_tracebacks() -> None:
    formatter = RedactSecrets([KEY, "AKIA-access", "the-secret-key"])
    for form in _forms(KEY) + _forms("the-secret-key"):
        record = logging.LogRecord("botocore.endpoint", logging.DEBUG, __file__, 1,
                                   "headers=%r", ({"x-amz-key": form},), None)
        line = formatter.format(record)
        assert form not in line and "****" in line, form
    try:
        raise ValueError(f"boom {base64.b64encode(KEY.encode()).decode()}")
    except ValueError:
        record = logging.LogRecord("bakfs", logging.ERROR, __file__, 1, "failed", (),
                                   sys.exc_info())
    text = formatter.format(record)
    assert "Traceback" in text and base64.b64encode(KEY.encode()).decode() not in text


def test_botocore_debug_with_sse_c_prints_no_key(rgw: S3Server, bucket_name: str,
                                                 tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))},
           **rgw.env(bucket_name),
           "BAKFS_S3_SSE_CUSTOMER_ALGORITHM": "AES256", "BAKFS_S3_SSE_CUSTOMER_KEY": KEY,
           "BAKFS_INDEX_PATH": str(tmp_path / "index"), "BAKFS_CACHE_PATH": str(tmp_path)}
    image = tmp_path / "img"
    image.write_bytes(b"\x05" * 70_000)
    outputs = []
    for args in (["backup", str(image), "--volume", "vol-sse"], ["ls"]):
        result = subprocess.run([sys.executable, "-m", "bakfs", "-vv", "--debug-module",
                                 "botocore", *args], env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout + result.stderr)
    text = "\n".join(outputs)
    assert "x-amz-server-side-encryption-customer-key" in text.lower()  # botocore spoke
    for form in _forms(KEY) + _forms(rgw.secret_key):
        assert form not in text, form

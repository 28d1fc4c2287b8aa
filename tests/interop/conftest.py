"""Fixtures for driving real Cinder 29.0.0 (in its own venv) through cinder_harness.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, S3Server

HARNESS = Path(__file__).with_name("cinder_harness.py")

Harness = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def cinder_python() -> str:
    """The interpreter of a venv with cinder==29.0.0 (created on first use, ~1 minute)."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / "cinder-venv.sh")],
                            capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        pytest.fail(f"could not install Cinder 29.0.0:\n{result.stderr[-3000:]}")
    return re.findall(r"^CINDER_PYTHON=(.*)$", result.stdout, re.MULTILINE)[-1]


@pytest.fixture
def cinder(cinder_python: str, rgw: S3Server, bucket_name: str) -> Harness:
    """Run a harness command against the test's bucket; returns its JSON output."""

    def run(*args: str, **settings: object) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
        env.update(rgw.env(bucket_name))
        env.update({f"BAKFS_S3_{k.upper()}": str(v) for k, v in settings.items()})
        result = subprocess.run([cinder_python, str(HARNESS), *args], capture_output=True,
                                text=True, env=env, timeout=600)
        assert result.returncode == 0, f"Cinder {args[0]} failed:\n{result.stderr[-4000:]}"
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    return run

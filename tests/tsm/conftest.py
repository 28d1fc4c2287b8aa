"""Fixtures of the TSM tests: the dsmc simulator first on PATH with its own server directory,
a configuration whose store is the local store (or radosgw), and loop devices."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bakfs.config import (
    CacheOptions,
    Config,
    IndexOptions,
    LocalOptions,
    S3Options,
    Secret,
    TsmOptions,
)
from bakfs.store.localdir import LocalStore
from tests.conftest import ROOT

PASSWORD = "Tsm-Pa55w0rd-4f9c1e"


@dataclasses.dataclass
class SimServer:
    """The simulator's server directory, and the knobs tests turn."""

    path: Path
    password: str
    monkeypatch: pytest.MonkeyPatch

    def set(self, **values: object) -> None:
        """DSMC_SIM_<NAME>=value for every dsmc started from now on."""
        for name, value in values.items():
            self.monkeypatch.setenv(f"DSMC_SIM_{name.upper()}", str(value))

    def clear(self, *names: str) -> None:
        for name in names:
            self.monkeypatch.delenv(f"DSMC_SIM_{name.upper()}", raising=False)

    def add_fault(self, command: str, remaining: int = 1, **fault: object) -> None:
        """A one-shot fault for the next `remaining` runs of `command`."""
        path = self.path / "faults.json"
        rules = json.loads(path.read_text()) if path.exists() else []
        rules.append({"match": {"command": command}, "remaining": remaining,
                      "fault": {f"DSMC_SIM_{k.upper()}": v for k, v in fault.items()}})
        path.write_text(json.dumps(rules))

    def commands(self) -> list[dict[str, object]]:
        path = self.path / "log" / "commands.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def server_json(self) -> dict[str, object]:
        return json.loads((self.path / "server.json").read_text())  # type: ignore[no-any-return]

    def update_server(self, **changes: object) -> None:
        doc = self.server_json()
        doc.update(changes)
        (self.path / "server.json").write_text(json.dumps(doc))

    def object_paths(self) -> list[str]:
        metas = sorted((self.path / "objects").glob("*/meta.json"))
        return [json.loads(p.read_text())["path"] for p in metas]

    def data_files(self) -> list[Path]:
        return sorted((self.path / "objects").glob("*/v*.data"))


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimServer:
    """scripts/dsmc first on PATH, its server in tmp_path/tsm-server with our password."""
    server = tmp_path / "tsm-server"
    server.mkdir()
    (server / "server.json").write_text(json.dumps({
        "server_name": "TESTSRV", "server_type": "Linux/x86_64",
        "server_version": "8.1.20.000", "node": "BAKFS-TEST", "password": PASSWORD,
        "stored_password": False, "mgmt_class": "STANDARD", "delete_backup_allowed": True,
        "verexists": 2}))
    (tmp_path / "dsmlog").mkdir()
    for name in list(os.environ):
        if name.startswith("DSMC_SIM_") or name in ("DSM_CONFIG", "DSM_DIR"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", f"{ROOT / 'scripts'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DSMC_SIM_SERVER", str(server))
    monkeypatch.setenv("DSM_LOG", str(tmp_path / "dsmlog"))
    return SimServer(server, PASSWORD, monkeypatch)


def make_config(tmp_path: Path, s3: S3Options | None = None, password: str | None = PASSWORD,
                **tsm: object) -> Config:
    return Config(
        s3=s3 or S3Options(),
        local=LocalOptions(path=str(tmp_path / "store")),
        tsm=TsmOptions(password=None if password is None else Secret(password), **tsm),
        cache=CacheOptions(path=str(tmp_path / "cache" / "chunks")),
        index=IndexOptions(path=str(tmp_path / "cache" / "index")))


@pytest.fixture
def config(tmp_path: Path, sim: SimServer) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def store(config: Config) -> LocalStore:
    s = LocalStore(Path(config.local.path), config.s3.bucket)
    s.ensure_bucket()
    return s


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A 6 MiB loop device filled with random data (detached in teardown)."""
    backing = tmp_path / "loop.img"
    backing.write_bytes(os.urandom(6 << 20))
    device = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def random_file(path: Path, size: int) -> bytes:
    """Random bytes with an all-zero MiB in the middle (a hole for sparse writers)."""
    data = bytearray(os.urandom(size))
    if size >= 3 << 20:
        data[1 << 20: 2 << 20] = bytes(1 << 20)
    path.write_bytes(data)
    return bytes(data)

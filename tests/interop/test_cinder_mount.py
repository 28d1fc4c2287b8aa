"""Through a real FUSE mount: Cinder's backups restore with dd, and backups made by writing
into incoming/ restore with Cinder, bit for bit."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from bakfs.catalog.discovery import find_backups, load_metadata
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.interop.conftest import Harness
from tests.interop.test_cinder import BLOCK, OBJECT, SIZE, _versions
from tests.mount.fixtures import Mount, base_env


def _dd(source: Path, target: Path) -> None:
    result = subprocess.run(["dd", f"if={source}", f"of={target}", "bs=4M"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cinder_chain_restores_with_dd_and_incoming_backups_restore_with_cinder(
        cinder: Harness, rgw: S3Server, bucket_name: str, s3_store: S3Store, tmp_path: Path,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    env = {**base_env(rgw, bucket_name, tmp_path), "BAKFS_S3_OBJECT_SIZE": str(OBJECT),
           "BAKFS_S3_BLOCK_SIZE": str(BLOCK)}
    versions = _versions(seed=11)[:3]
    cinder_volume = str(uuid.uuid4())
    made, parent = [], None
    for n, version in enumerate(versions):
        image = tmp_path / f"c{n}.img"
        image.write_bytes(version)
        args = ["backup", "--volume-file", str(image), "--volume-id", cinder_volume,
                "--backup-id", str(uuid.uuid4())]
        if parent:
            args += ["--parent-id", parent["backup_id"], "--parent-prefix", parent["prefix"]]
        parent = cinder(*args, object_size=OBJECT, block_size=BLOCK, compression="zstd")
        made.append(parent)

    mount = start_mount(env)
    for info, version in zip(made, versions, strict=True):
        (name,) = [n for n in os.listdir(mount.path / cinder_volume)
                   if n.endswith(info["backup_id"])]
        out = tmp_path / f"dd-{info['backup_id']}"
        _dd(mount.path / cinder_volume / name, out)
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(version).digest()

    volume = "vol-incoming"
    for n, version in enumerate(versions[:2]):
        image = tmp_path / f"b{n}.img"
        image.write_bytes(version)
        _dd(image, mount.path / "incoming" / volume)
    metas = sorted((load_metadata(s3_store, r) for r in find_backups(s3_store, volume)),
                   key=lambda m: m.parent_id is not None)
    assert [m.parent_id is None for m in metas] == [True, False]
    chain = [{"backup_id": m.backup_id, "volume_id": volume, "parent_id": m.parent_id,
              "prefix": next(str(r.prefix) for r in find_backups(s3_store, volume)
                             if r.backup_id == m.backup_id)} for m in metas]
    for meta, version in zip(metas, versions, strict=False):
        target = tmp_path / f"cinder-{meta.backup_id}.img"
        target.write_bytes(os.urandom(SIZE))
        cinder("restore", "--volume-file", str(target), "--chain", json.dumps(chain),
               "--backup-id", meta.backup_id)
        assert target.read_bytes() == version

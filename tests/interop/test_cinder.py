"""bakfs and real Cinder 29.0.0 read each other's backups bit for bit, on radosgw.

Cinder's own S3BackupDriver runs in a separate venv (tests/interop/cinder_harness.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bakfs.backup.simple import write_backup
from bakfs.catalog.discovery import find_backup, find_backups, load_chain, load_metadata
from bakfs.catalog.inventory import survey
from bakfs.cinder.record import backup_record, backup_url
from bakfs.read.simple import restore
from bakfs.read.verify import verify
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.interop.conftest import Harness

KiB = 1024
OBJECT = 256 * KiB
BLOCK = 32 * KiB
SIZE = 2 * 1024 * KiB + 12345  # an unaligned tail


def _sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def _versions(seed: int) -> list[bytearray]:
    """A volume and three later states: random changes, a region zeroed, the tail changed."""
    rng = random.Random(seed)
    base = bytearray(rng.randbytes(SIZE))
    base[300 * KiB:500 * KiB] = bytes(200 * KiB)
    base[700 * KiB:900 * KiB] = b"compressible text " * (200 * KiB // 18) + b"x" * (
        200 * KiB % 18)
    versions = [base]
    for step in range(3):
        new = bytearray(versions[-1])
        start = rng.randrange(SIZE - 100 * KiB)
        new[start:start + 70 * KiB] = rng.randbytes(70 * KiB)
        if step == 1:
            new[1024 * KiB:1536 * KiB] = bytes(512 * KiB)  # data turned to zeros must win
        if step == 2:
            new[-100:] = rng.randbytes(100)
        versions.append(new)
    return versions


def _s3(rgw: S3Server, bucket: str, **changes: object) -> S3Store:
    return S3Store(rgw.options(bucket, object_size=OBJECT, block_size=BLOCK, **changes))


@pytest.mark.parametrize("compression", ["zlib", "bz2", "zstd", "none"])
def test_bakfs_reads_a_cinder_chain(cinder: Harness, rgw: S3Server, bucket_name: str,
                                    tmp_path: Path, compression: str) -> None:
    volume_id = str(uuid.uuid4())
    versions = _versions(seed=len(compression))
    made = []
    parent: dict[str, str] | None = None
    for n, version in enumerate(versions):
        image = tmp_path / f"v{n}.img"
        image.write_bytes(version)
        args = ["backup", "--volume-file", str(image), "--volume-id", volume_id,
                "--backup-id", str(uuid.uuid4()), "--name", f"level {n}"]
        if parent:
            args += ["--parent-id", parent["backup_id"], "--parent-prefix", parent["prefix"]]
        parent = cinder(*args, object_size=OBJECT, block_size=BLOCK, compression=compression)
        made.append(parent)

    store = _s3(rgw, bucket_name)
    assert [r.backup_id for r in find_backups(store, volume_id)] == [m["backup_id"]
                                                                       for m in made]
    for info, version in zip(made, versions, strict=True):
        ref = find_backup(store, info["backup_id"])
        assert str(ref.prefix) == info["prefix"]
        out = io.BytesIO()
        assert restore(store, ref, out) == _sha(version)
        assert out.getvalue() == version
        # Cinder's sha256file agrees with bakfs's hashing of every block
        assert verify(store, info["backup_id"], deep=True, report=lambda _: None) == []
    listed = survey(store, volume_id)  # what `bakfs ls` shows
    assert [(b.ref.backup_id, b.kind, b.size) for b in listed] == [
        (m["backup_id"], "incremental" if n else "full", SIZE) for n, m in enumerate(made)]
    assert [b.metadata.backup_name for b in listed if b.metadata] == [
        f"level {n}" for n in range(4)]
    recorded = {o.compression for r in find_backups(store, volume_id)
                for o in load_metadata(store, r).objects}
    assert recorded <= {compression, "none"}


def _bakfs(*args: str, env: dict[str, str], stdin: bytes | None = None) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    result = subprocess.run([sys.executable, "-m", "bakfs", *args], capture_output=True,
                            env={**clean, **env}, input=stdin, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("compression", ["zstd", "zlib", "bz2", "none"])
def test_cinder_restores_a_bakfs_chain(cinder: Harness, rgw: S3Server, bucket_name: str,
                                       tmp_path: Path, compression: str) -> None:
    volume_id = str(uuid.uuid4())
    env = {**rgw.env(bucket_name), "BAKFS_S3_OBJECT_SIZE": str(OBJECT),
           "BAKFS_S3_BLOCK_SIZE": str(BLOCK), "BAKFS_S3_COMPRESSION": compression}
    versions = _versions(seed=7)
    summaries = []
    for n, version in enumerate(versions):
        image = tmp_path / f"v{n}.img"
        image.write_bytes(version)
        summaries.append(_bakfs("backup", str(image), "--volume", volume_id, "--json",
                                env=env))
    assert [s["kind"] for s in summaries] == ["full", "incremental", "incremental",
                                              "incremental"]
    chain = [{"backup_id": s["backup_id"], "volume_id": volume_id, "prefix": s["prefix"],
              "parent_id": s["parent_id"]} for s in summaries]
    for n in (3, 1):
        for new_volume in (False, True):
            target = tmp_path / f"cinder-restored-{n}-{new_volume}.img"
            target.write_bytes(os.urandom(SIZE))  # an existing volume holding other data
            args = ["restore", "--volume-file", str(target), "--chain", json.dumps(chain),
                    "--backup-id", str(summaries[n]["backup_id"])]
            cinder(*args, *(["--volume-is-new"] if new_volume else []))
            assert _sha(target.read_bytes()) == _sha(versions[n]), (n, new_volume)


def test_cinder_makes_an_incremental_on_a_bakfs_backup_and_bakfs_reads_it(
        cinder: Harness, rgw: S3Server, bucket_name: str, tmp_path: Path) -> None:
    volume_id = str(uuid.uuid4())
    env = {**rgw.env(bucket_name), "BAKFS_S3_OBJECT_SIZE": str(OBJECT),
           "BAKFS_S3_BLOCK_SIZE": str(BLOCK)}
    first, second = _versions(seed=3)[:2]
    image = tmp_path / "v.img"
    image.write_bytes(first)
    full = _bakfs("backup", str(image), "--volume", volume_id, "--json", env=env)
    image.write_bytes(second)
    inc = cinder("backup", "--volume-file", str(image), "--volume-id", volume_id,
                 "--backup-id", str(uuid.uuid4()), "--parent-id", str(full["backup_id"]),
                 "--parent-prefix", str(full["prefix"]), object_size=OBJECT, block_size=BLOCK)
    store = _s3(rgw, bucket_name)
    # Cinder compared with bakfs's sha256file: it stored only the changed runs
    assert 0 < inc["object_count"] <= 4
    out = io.BytesIO()
    assert restore(store, find_backup(store, inc["backup_id"]), out) == _sha(second)


def _sparse_image(path: Path, regions: list[tuple[int, bytes]], size: int) -> bytes:
    """Write `regions` into a sparse file of `size` (made if missing); returns its bytes."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(size)
        for offset, data in regions:
            f.seek(offset)
            f.write(data)
    return path.read_bytes()


def test_cinder_restores_bakfs_backups_of_a_sparse_source(
        cinder: Harness, rgw: S3Server, bucket_name: str, tmp_path: Path) -> None:
    """Holes never read by bakfs (whole windows of zeros as zero objects, zero digests in the
    sha256file) restore bit for bit with Cinder, and Cinder's own incremental on them,
    which compares its hashes with bakfs's, stores only what it changed."""
    volume_id = str(uuid.uuid4())
    env = {**rgw.env(bucket_name), "BAKFS_S3_OBJECT_SIZE": str(OBJECT),
           "BAKFS_S3_BLOCK_SIZE": str(BLOCK)}
    rng = random.Random(17)
    size = 64 * OBJECT + 5000
    image = tmp_path / "sparse.img"
    versions = [_sparse_image(image, [(OBJECT + 100, rng.randbytes(3 * BLOCK)),
                                      (40 * OBJECT - 7, rng.randbytes(OBJECT)),
                                      (size - 4000, rng.randbytes(4000))], size)]
    full = _bakfs("backup", str(image), "--volume", volume_id, "--json", env=env)
    assert full["hole_bytes"] >= 58 * OBJECT
    # data into a hole, and data punched back into a hole: zeros that must overwrite
    versions.append(_sparse_image(image, [(20 * OBJECT, rng.randbytes(BLOCK))], size))
    subprocess.run(["fallocate", "--punch-hole", "--offset", str(40 * OBJECT), "--length",
                    str(OBJECT), str(image)], check=True)
    versions[-1] = image.read_bytes()
    inc = _bakfs("backup", str(image), "--volume", volume_id, "--json", env=env)
    assert inc["kind"] == "incremental" and inc["hole_bytes"] >= 59 * OBJECT
    chain = [{"backup_id": s["backup_id"], "volume_id": volume_id, "prefix": s["prefix"],
              "parent_id": s["parent_id"]} for s in (full, inc)]
    for n, version in enumerate(versions):
        for new_volume in (False, True):
            target = tmp_path / f"restored-{n}-{new_volume}.img"
            target.write_bytes(os.urandom(size))  # an existing volume holding other data
            cinder("restore", "--volume-file", str(target), "--chain", json.dumps(chain),
                   "--backup-id", str(chain[n]["backup_id"]),
                   *(["--volume-is-new"] if new_volume else []))
            assert _sha(target.read_bytes()) == _sha(version), (n, new_volume)
    versions.append(_sparse_image(image, [(50 * OBJECT, rng.randbytes(BLOCK))], size))
    made = cinder("backup", "--volume-file", str(image), "--volume-id", volume_id,
                  "--backup-id", str(uuid.uuid4()), "--parent-id", str(inc["backup_id"]),
                  "--parent-prefix", str(inc["prefix"]), object_size=OBJECT, block_size=BLOCK)
    assert made["object_count"] == 1  # every hole block matched bakfs's zero digest
    store = _s3(rgw, bucket_name)
    out = io.BytesIO()
    assert restore(store, find_backup(store, made["backup_id"]), out) == _sha(versions[-1])


def test_cinder_accepts_the_export_record_of_a_bakfs_backup(
        cinder: Harness, rgw: S3Server, bucket_name: str) -> None:
    store = _s3(rgw, bucket_name)
    options = dataclasses.replace(store.options)
    full = write_backup(store, io.BytesIO(b"x" * 300000), "vol-export", options,
                        name="exported", description="from bakfs")
    inc = write_backup(store, io.BytesIO(b"y" * 300000), "vol-export", options, parent=full)
    for ref in (full, inc):
        chain = load_chain(store, ref)
        fields = backup_record(chain[-1][1], ref.prefix, bucket_name, chain[0][1].covered_size)
        result = cinder("import-url", "--backup-url", backup_url(fields))
        assert result["ok"]
        imported = result["imported"]
        assert imported["id"] == ref.backup_id
        assert imported["service_metadata"] == str(ref.prefix)
        assert imported["container"] == bucket_name
        assert imported["object_count"] == len(chain[-1][1].objects)
    assert result["imported"]["parent_id"] == full.backup_id

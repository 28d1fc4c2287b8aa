"""Fixtures of the read-engine tests: engine configurations on radosgw, a store wrapper that
counts GETs, and volume chains (made by bakfs here; by real Cinder in test_cinder_chains)."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import random
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from bakfs.backup.simple import write_backup
from bakfs.catalog.discovery import BackupRef
from bakfs.cinder import naming
from bakfs.config import CacheOptions, Config, IndexOptions, KiB, S3Options
from bakfs.read.engine import Engine
from bakfs.store.base import ObjectInfo, ObjectStore
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server, empty_bucket

BLOCK = 4 * KiB
OBJECT = 64 * KiB


class CountingStore:
    """A real store that counts the GETs of each key and the listings (thread-safe)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.gets: collections.Counter[str] = collections.Counter()
        self.lists: list[str] = []
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return self.inner.description

    def ensure_bucket(self) -> None:
        self.inner.ensure_bucket()

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False,
            if_match: str | None = None, md5: bytes | None = None) -> str | None:
        return self.inner.put(key, data, if_absent=if_absent, if_match=if_match, md5=md5)

    def put_stream(self, key: str, chunks: Iterable[bytes | memoryview]) -> ObjectInfo:
        return self.inner.put_stream(key, chunks)

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        with self._lock:
            self.gets[key] += 1
        return self.inner.get(key, byte_range)

    def iter_object(self, key: str, chunk_size: int = 256 << 10) -> Iterator[bytes]:
        with self._lock:
            self.gets[key] += 1
        return self.inner.iter_object(key, chunk_size)

    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        with self._lock:
            self.lists.append(prefix)
        return self.inner.list(prefix, start_after)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def close(self) -> None:
        pass

    def data_gets(self) -> collections.Counter[str]:
        """GETs of data objects only (not `_metadata` / `_sha256file`)."""
        return collections.Counter({k: n for k, n in self.gets.items()
                                    if not k.endswith(("_metadata", "_sha256file"))})


@dataclasses.dataclass
class Chain:
    """Backups of one volume, oldest first, with the source image of each."""

    volume_id: str
    refs: list[BackupRef]
    images: list[bytes]

    @property
    def ids(self) -> list[str]:
        return [r.backup_id for r in self.refs]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_versions(size: int, levels: int, seed: int = 1) -> list[bytes]:
    """A VM-like image (1/3 zeros, 1/3 text, 1/3 random in 64 KiB regions, an unaligned
    tail) and `levels - 1` mutations of it: random patches, a region zeroed by an
    incremental (the zeros must win over the parent's data), the short tail changed."""
    rng = random.Random(seed)
    text = b" ".join(b"volume backup chunk %d" % i for i in range(20000))
    image = bytearray()
    while len(image) < size:
        kind = rng.randrange(3)
        n = min(64 * KiB, size - len(image))
        if kind == 0:
            image += bytes(n)
        elif kind == 1:
            start = rng.randrange(len(text) - n)
            image += text[start:start + n]
        else:
            image += rng.randbytes(n)
    versions = [bytes(image)]
    for level in range(1, levels):
        new = bytearray(versions[-1])
        for _ in range(4):
            start = rng.randrange(size)
            patch = rng.randbytes(rng.randrange(1, 3 * BLOCK))
            new[start:start + len(patch)] = patch[:size - start]
        zero_at = (level * 5 * BLOCK) % (size // 2)
        new[zero_at:zero_at + 3 * BLOCK] = bytes(3 * BLOCK)
        new[-77:] = rng.randbytes(77)
        versions.append(bytes(new))
    return versions


@pytest.fixture
def engine_config(rgw: S3Server, s3_store: S3Store, tmp_path: Path) -> Callable[..., Config]:
    """A Config on the test bucket; keyword arguments change [cache] options."""

    def make(**cache: object) -> Config:
        s3 = rgw.options(s3_store.bucket, object_size=OBJECT, block_size=BLOCK)
        defaults: dict[str, object] = {"path": str(tmp_path / "cache"), "max_size": 64 << 20,
                                       "memory_size": 1 << 20, "readahead_max": 512 * KiB}
        defaults.update(cache)
        return Config(s3=s3, cache=CacheOptions(**defaults),  # type: ignore[arg-type]
                      index=IndexOptions(path=str(tmp_path / "index")))

    return make


def write_chain(store: ObjectStore, versions: list[bytes], volume_id: str,
                compression: str = "zstd") -> Chain:
    options = S3Options(object_size=OBJECT, block_size=BLOCK, compression=compression)  # type: ignore[arg-type]
    refs: list[BackupRef] = []
    parent = None
    for version in versions:
        parent = write_backup(store, io.BytesIO(version), volume_id, options, parent=parent)
        refs.append(parent)
    return Chain(volume_id, refs, versions)


@pytest.fixture
def counting(s3_store: S3Store) -> CountingStore:
    return CountingStore(s3_store)


CINDER_SIZE = 9 * OBJECT + 3 * BLOCK + 333  # an unaligned tail
# One chain, each level written with another codec (Cinder records it per object; the random
# regions come out as "none" objects whatever the codec, as compressing them does not help).
CINDER_CODECS = ["zlib", "bz2", "zstd"]


def _cinder_python() -> str:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(["bash", str(root / "scripts" / "cinder-venv.sh")],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        pytest.fail(f"scripts/cinder-venv.sh failed:\n{result.stderr[-3000:]}")
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("CINDER_PYTHON=")]
    return lines[-1].split("=", 1)[1]


@pytest.fixture(scope="module")
def module_bucket(rgw: S3Server) -> Iterator[S3Store]:
    store = S3Store(rgw.options(f"bakfs-read-{uuid.uuid4().hex[:10]}"))
    store.ensure_bucket()
    yield store
    empty_bucket(store)
    store.close()


@pytest.fixture(scope="module")
def cinder_chain(rgw: S3Server, module_bucket: S3Store,
                 tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """Three backups of one volume made by real Cinder 29.0.0's S3 driver (full + two
    incrementals, codecs zlib, bz2, zstd, and "none" for incompressible objects), with the
    source image of each."""
    python = _cinder_python()
    root = Path(__file__).resolve().parents[2]
    work = tmp_path_factory.mktemp("cinder")
    volume_id = str(uuid.uuid4())
    versions = make_versions(CINDER_SIZE, len(CINDER_CODECS), seed=99)
    env = {**os.environ, **rgw.env(module_bucket.bucket),
           "BAKFS_S3_OBJECT_SIZE": str(OBJECT), "BAKFS_S3_BLOCK_SIZE": str(BLOCK)}
    refs: list[BackupRef] = []
    parent: tuple[str, str] | None = None
    for level, (image, codec) in enumerate(zip(versions, CINDER_CODECS, strict=True)):
        source = work / f"volume-{level}.img"
        source.write_bytes(image)
        backup_id = str(uuid.uuid4())
        args = [python, str(root / "tests" / "interop" / "cinder_harness.py"), "backup",
                "--volume-file", str(source), "--volume-id", volume_id, "--backup-id",
                backup_id]
        if parent is not None:
            args += ["--parent-id", parent[0], "--parent-prefix", parent[1]]
        result = subprocess.run(args, capture_output=True, text=True, timeout=300,
                                env={**env, "BAKFS_S3_COMPRESSION": codec})
        if result.returncode != 0:
            pytest.fail(f"Cinder backup failed:\n{result.stderr[-3000:]}")
        prefix = json.loads(result.stdout)["prefix"]
        refs.append(BackupRef(naming.parse_prefix(prefix)))
        parent = (backup_id, prefix)
    return Chain(volume_id, refs, versions)


@pytest.fixture(scope="module")
def bakfs_chain(module_bucket: S3Store) -> Chain:
    """Three backups made by bakfs, one codec per level as in `cinder_chain`."""
    versions = make_versions(CINDER_SIZE, len(CINDER_CODECS), seed=98)
    refs: list[BackupRef] = []
    parent = None
    for version, codec in zip(versions, CINDER_CODECS, strict=True):
        options = S3Options(object_size=OBJECT, block_size=BLOCK,
                            compression=codec)  # type: ignore[arg-type]
        parent = write_backup(module_bucket, io.BytesIO(version), "vol-bakfs", options,
                              parent=parent)
        refs.append(parent)
    return Chain("vol-bakfs", refs, versions)


def module_config(rgw: S3Server, bucket: str, work: Path, **cache: object) -> Config:
    defaults: dict[str, object] = {"path": str(work / "cache"), "max_size": 64 << 20,
                                   "memory_size": 1 << 20, "readahead_max": 512 * KiB}
    defaults.update(cache)
    return Config(s3=rgw.options(bucket), cache=CacheOptions(**defaults),  # type: ignore[arg-type]
                  index=IndexOptions(path=str(work / "index")))


async def read_backup(engine: Engine, backup_id: str, offset: int, size: int,
               stream: object = None) -> bytes:
    """Bytes of a backup named by id, found as a command naming a backup finds it."""
    return bytes(await engine.read(await engine.catalog.find(backup_id), offset, size, stream))


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[bytes], str]]:
    """Loop devices over files holding the given bytes; detached in teardown."""
    devices: list[str] = []

    def attach(content: bytes) -> str:
        backing = tmp_path / f"loop{len(devices)}.img"
        backing.write_bytes(content)
        result = subprocess.run(["losetup", "--find", "--show", str(backing)],
                                capture_output=True, text=True)
        assert result.returncode == 0, f"losetup (needs root): {result.stderr}"
        devices.append(result.stdout.strip())
        return devices[-1]

    yield attach
    for device in devices:
        subprocess.run(["losetup", "--detach", device], capture_output=True)

"""`bakfs demo`: the whole story on a generated image, checked byte for byte.

Generate a VM-like image, back it up in full, change 2 % of it, back it up incrementally,
restore both from the store and compare their sha256 with the images'. Works on a fresh
machine with no configuration (the embedded local store) and on any configured S3 store.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bakfs import sample_image
from bakfs.cinder import naming
from bakfs.config import Config
from bakfs.discovery import BackupRef, backup_objects, load_metadata
from bakfs.store import ObjectStore, open_store
from bakfs.volume_reader import restore
from bakfs.volume_writer import write_backup


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stored_bytes(store: ObjectStore, ref: BackupRef) -> tuple[int, int]:
    """(data objects, their stored bytes) of one backup."""
    sizes = [info.size for info in backup_objects(store, ref)
             if (parsed := naming.parse_key(info.key)) and parsed.number is not None]
    return len(sizes), sum(sizes)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def run_demo(config: Config, size: int, keep: bool = False, workdir: str | None = None) -> int:
    store = open_store(config)
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bakfs-demo-"))
    tmp.mkdir(parents=True, exist_ok=True)
    volume_id = f"demo-{uuid.uuid4()}"
    refs: list[BackupRef] = []
    print(f"bakfs demo: store = {store.description}")
    print(f"            volume = {volume_id}, work dir = {tmp}")
    try:
        day1, day2 = tmp / "day1.img", tmp / "day2.img"
        sample_image.generate(day1, size, seed=1)
        shutil.copyfile(day1, day2)
        changed = sample_image.mutate(day2, 0.02, seed=2, block_size=config.s3.block_size)
        images = {day1: _sha256(day1), day2: _sha256(day2)}
        print(f"1. generated {day1.name} ({_mib(size)}: zeros, text, random) and {day2.name} "
              f"(the same with {_mib(changed)} rewritten)")

        parent: BackupRef | None = None
        for number, image in enumerate((day1, day2), start=2):
            started = time.monotonic()
            with open(image, "rb") as source:
                ref = write_backup(store, source, volume_id, config.s3, parent=parent,
                                   name=image.stem, description="bakfs demo")
            refs.append(ref)
            seconds = time.monotonic() - started
            count, stored = _stored_bytes(store, ref)
            kind = "incremental" if parent else "full"
            print(f"{number}. {kind} backup {ref.backup_id} of {image.name}: {count} objects, "
                  f"{_mib(stored)} stored, {seconds:.1f} s")
            parent = ref

        ok = True
        for number, (ref, image) in enumerate(zip(refs, (day1, day2), strict=True), start=4):
            target = tmp / f"restored-{image.name}"
            with open(target, "wb") as out:
                digest = restore(store, ref, out)
            match = digest == images[image] == _sha256(target)
            ok &= match
            chain = "full" if load_metadata(store, ref).parent_id is None else "chain of 2"
            print(f"{number}. restored {ref.backup_id} ({chain}) -> {target.name}: sha256 "
                  f"{digest[:16]}… {'matches' if match else 'DIFFERS FROM'} {image.name}")
        print("demo OK: every restored byte matches" if ok else "demo FAILED: bytes differ")
        return 0 if ok else 1
    finally:
        if not keep:
            for ref in reversed(refs):
                # metadata first, so a half-removed backup is never listed as complete
                store.delete(ref.metadata_key)
                for info in backup_objects(store, ref):
                    store.delete(info.key)
            if not workdir:
                shutil.rmtree(tmp, ignore_errors=True)
        store.close()

"""`bakfs demo`: the whole story on a generated image, checked byte for byte, with the tools
an operator uses: mount the store, back up by `dd` into `incoming/`, change the image, back up
again (an incremental), `ls -l` the mount, restore both backups with `dd`, compare sha256.

Works on a fresh machine with no configuration (the embedded local store) and on any
configured S3 store. Needs FUSE (/dev/fuse and fusermount3).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bakfs import config as config_module
from bakfs import sample_image
from bakfs.catalog.discovery import find_backups, load_metadata
from bakfs.catalog.inventory import delete
from bakfs.config import Config
from bakfs.errors import BakfsError
from bakfs.store import ObjectStore, open_store


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise BakfsError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _bakfs(*args: str) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "bakfs", *args)


def run(args: argparse.Namespace, config: Config) -> int:
    return run_demo(config, size=config_module.parse_size(args.size), keep=args.keep,
                    workdir=args.workdir)


def run_demo(config: Config, size: int, keep: bool = False, workdir: str | None = None) -> int:
    store = open_store(config)
    store.ensure_bucket()
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bakfs-demo-"))
    tmp.mkdir(parents=True, exist_ok=True)
    mountpoint = tmp / "mnt"
    mountpoint.mkdir(exist_ok=True)
    volume_id = f"demo-{uuid.uuid4().hex[:8]}"
    print(f"bakfs demo: store = {store.description}")
    print(f"            volume = {volume_id}, work dir = {tmp}")
    mounted = False
    try:
        day1, day2 = tmp / "day1.img", tmp / "day2.img"
        sample_image.generate(day1, size, seed=1)
        shutil.copyfile(day1, day2)
        changed = sample_image.mutate(day2, 0.02, seed=2, block_size=config.s3.block_size)
        images = {day1: _sha256(day1), day2: _sha256(day2)}
        print(f"1. generated {day1.name} ({_mib(size)}: zeros, text, random) and {day2.name} "
              f"(the same with {_mib(changed)} rewritten)")

        started = time.monotonic()
        _bakfs("mount", str(mountpoint), "--log", str(tmp / "mount.log"))
        mounted = True
        print(f"2. bakfs mount {mountpoint} ({time.monotonic() - started:.1f} s)")

        for number, image in enumerate((day1, day2), start=3):
            started = time.monotonic()
            _run("dd", f"if={image}", f"of={mountpoint / 'incoming' / volume_id}", "bs=4M")
            print(f"{number}. dd if={image.name} of=mnt/incoming/{volume_id} bs=4M "
                  f"({time.monotonic() - started:.1f} s)")

        refs = sorted(find_backups(store, volume_id),
                      key=lambda r: load_metadata(store, r).parent_id is not None)
        listing = _run("ls", "-l", str(mountpoint / volume_id)).stdout
        print(f"5. ls -l mnt/{volume_id}")
        for line in listing.strip().splitlines():
            print(f"     {line}")
        kinds = ["full" if load_metadata(store, r).parent_id is None else "incremental"
                 for r in refs]
        print(f"   ({' then '.join(kinds)}; the incremental stored only the changed blocks)")

        ok = len(refs) == 2
        for number, (ref, image) in enumerate(zip(refs, (day1, day2), strict=False), start=6):
            name = next(n for n in os.listdir(mountpoint / volume_id)
                        if n.endswith(ref.backup_id))
            target = tmp / f"restored-{image.name}"
            _run("dd", f"if={mountpoint / volume_id / name}", f"of={target}", "bs=4M")
            digest = _sha256(target)
            match = digest == images[image]
            ok &= match
            print(f"{number}. dd if=mnt/{volume_id}/{name[:24]}… of={target.name}: sha256 "
                  f"{digest[:16]}… {'matches' if match else 'DIFFERS FROM'} {image.name}")
        print("demo OK: every restored byte matches" if ok else "demo FAILED: bytes differ")
        return 0 if ok else 1
    finally:
        if mounted:
            subprocess.run([sys.executable, "-m", "bakfs", "umount", "--force",
                            str(mountpoint)], capture_output=True)
        if not keep:
            _remove_demo_backups(store, volume_id)
        if not workdir:  # --keep keeps the backups; a work dir of our own always goes
            shutil.rmtree(tmp, ignore_errors=True)
        store.close()


def _remove_demo_backups(store: ObjectStore, volume_id: str) -> None:
    """Incrementals first: a backup with dependents cannot be deleted."""
    refs = find_backups(store, volume_id)
    for ref in sorted(refs, key=lambda r: load_metadata(store, r).parent_id is None):
        delete(store, ref.backup_id)

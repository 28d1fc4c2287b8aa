"""`verify-device` and `restore --delta` against radosgw: the comparison reads no data
object, a delta restore fetches only the objects under the differing blocks, writes only
those blocks, converges when interrupted, and refuses targets of another size or in use."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from bakfs.catalog.discovery import load_metadata
from bakfs.config import Config
from bakfs.errors import BackupNotFound, TargetError
from bakfs.read.compare import verify_device_with
from bakfs.read.delta import DeltaResult, delta_restore_with
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.read.conftest import BLOCK, OBJECT, CountingStore, make_versions, write_chain

SIZE = 40 * OBJECT + 3 * BLOCK + 1000  # an unaligned tail


def differing_ranges(old: bytes, new: bytes) -> list[tuple[int, int]]:
    """The blocks where two images differ, merged, as byte ranges (computed directly)."""
    runs: list[tuple[int, int]] = []
    for offset in range(0, len(new), BLOCK):
        if old[offset:offset + BLOCK] != new[offset:offset + BLOCK]:
            length = min(BLOCK, len(new) - offset)
            if runs and runs[-1][0] + runs[-1][1] == offset:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((offset, length))
    return runs


def test_verify_device_reads_no_data_and_finds_every_differing_block(
        s3_store: S3Store, counting: CountingStore, engine_config: Callable[..., Config],
        tmp_path: Path) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 3, seed=5), "vol-vd")
    target = tmp_path / "target.img"
    config = engine_config()
    target.write_bytes(chain.images[-1])
    same = trio.run(lambda: verify_device_with(config, chain.ids[-1], str(target),
                                               store=counting))
    assert same.identical and same.runs == [] and same.blocks == -(-SIZE // BLOCK)
    target.write_bytes(chain.images[0])
    other = trio.run(lambda: verify_device_with(config, chain.ids[-1], str(target),
                                                store=counting))
    expected = differing_ranges(chain.images[0], chain.images[-1])
    assert expected and not other.identical
    assert other.ranges() == expected
    assert other.differing_bytes == sum(n for _o, n in expected)
    # the store gave only documents: the _sha256file (and _metadata while indexing)
    assert counting.data_gets() == {}
    assert any(k.endswith("_sha256file") for k in counting.gets)


def test_verify_device_on_a_larger_device_and_a_short_file(
        s3_store: S3Store, engine_config: Callable[..., Config], tmp_path: Path,
        loop_device: Callable[[bytes], str]) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 1, seed=6), "vol-vd2")
    config = engine_config()
    device = loop_device(chain.images[0] + b"\xee" * (8 * BLOCK - SIZE % 4096))
    result = trio.run(lambda: verify_device_with(config, chain.ids[0], device))
    assert result.identical and result.is_device and result.target_size > SIZE
    short = tmp_path / "short.img"
    short.write_bytes(chain.images[0][:SIZE - 5 * BLOCK])
    result = trio.run(lambda: verify_device_with(config, chain.ids[0], str(short)))
    assert not result.identical and not result.size_matches
    # the blocks the file lacks (whole or in part) differ, the others match
    first = (SIZE - 5 * BLOCK) // BLOCK
    assert result.runs == [(first, result.blocks - first)]


def test_delta_restore_fetches_only_the_objects_under_changed_blocks(
        s3_store: S3Store, counting: CountingStore, engine_config: Callable[..., Config],
        tmp_path: Path) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 3, seed=7), "vol-delta")
    stale, wanted = chain.images[0], chain.images[-1]
    target = tmp_path / "stale.img"
    target.write_bytes(stale)
    config = engine_config()
    dry = trio.run(lambda: delta_restore_with(config, chain.ids[-1], str(target),
                                              store=counting, dry_run=True))
    assert target.read_bytes() == stale and dry.written_bytes == 0
    assert counting.data_gets() == {}
    changed = differing_ranges(stale, wanted)
    assert dry.ranges == changed
    result = trio.run(lambda: delta_restore_with(config, chain.ids[-1], str(target),
                                                 store=counting))
    assert target.read_bytes() == wanted
    assert result.written_bytes == sum(n for _o, n in changed) == result.differing_bytes
    # the objects covering the changed blocks, from the backups' own metadata: the data of a
    # block comes from the newest backup of the chain whose objects cover it; an all-zero
    # object is never fetched (its md5 says it is zeros)
    covering: set[str] = set()
    for offset, length in changed:
        for block in range(offset, offset + length, BLOCK):
            for ref in reversed(chain.refs):
                owner = [o for o in load_metadata(s3_store, ref).objects
                         if o.offset <= block < o.end]
                if owner:
                    if owner[0].md5 != hashlib.md5(bytes(owner[0].length)).hexdigest():
                        covering.add(owner[0].name)
                    break
    fetched = set(counting.data_gets())
    assert fetched == covering
    assert max(counting.data_gets().values()) == 1
    sizes = {info.key: info.size for info in s3_store.list("volume_vol-delta/")}
    assert result.fetched_bytes == sum(sizes[k] for k in covering)
    assert result.objects_needed == len(covering)
    again = trio.run(lambda: delta_restore_with(config, chain.ids[-1], str(target)))
    assert again.ranges == [] and again.written_bytes == 0 and again.objects_fetched == 0


def test_interrupted_delta_restore_converges(s3_store: S3Store,
                                             engine_config: Callable[..., Config],
                                             tmp_path: Path) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=8), "vol-conv")
    target = tmp_path / "stale.img"
    target.write_bytes(chain.images[0])
    base = engine_config()
    config = dataclasses.replace(base, s3=dataclasses.replace(base.s3, max_pool_connections=1))
    pieces = differing_ranges(chain.images[0], chain.images[1])
    assert len(pieces) >= 3

    async def interrupted() -> None:
        with trio.CancelScope() as scope:
            def on_start(phase: str, total: int) -> Callable[[int], None]:
                return lambda done: scope.cancel() if phase == "restore" else None

            await delta_restore_with(config, chain.ids[1], str(target), on_start=on_start)
        assert scope.cancelled_caught

    trio.run(interrupted)
    partial = target.read_bytes()
    assert partial != chain.images[0] and partial != chain.images[1]
    left = differing_ranges(partial, chain.images[1])
    assert 0 < len(left) < len(pieces)
    result: DeltaResult = trio.run(lambda: delta_restore_with(config, chain.ids[1],
                                                              str(target)))
    assert result.ranges == left
    assert target.read_bytes() == chain.images[1]


def test_delta_restore_refuses_wrong_sizes_and_devices_in_use(
        s3_store: S3Store, engine_config: Callable[..., Config], tmp_path: Path,
        loop_device: Callable[[bytes], str]) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=9), "vol-size")
    config = engine_config()
    longer = tmp_path / "longer.img"
    longer.write_bytes(chain.images[0] + b"tail")
    with pytest.raises(TargetError, match="--resize"):
        trio.run(lambda: delta_restore_with(config, chain.ids[1], str(longer)))
    assert longer.read_bytes() == chain.images[0] + b"tail"
    shorter = tmp_path / "shorter.img"
    shorter.write_bytes(chain.images[0][:SIZE // 2])
    for path in (longer, shorter):
        trio.run(lambda p=path: delta_restore_with(  # type: ignore[misc]
            config, chain.ids[1], str(p), resize=True))
        assert path.read_bytes() == chain.images[1]
    small = loop_device(chain.images[0][:SIZE // 2 // 4096 * 4096])
    with pytest.raises(TargetError, match="cannot be resized"):
        trio.run(lambda: delta_restore_with(config, chain.ids[1], small, resize=True))
    device = loop_device(chain.images[0] + bytes(4096 - SIZE % 4096))
    holder = os.open(device, os.O_RDONLY | os.O_EXCL)  # another program claims it
    try:
        with pytest.raises(TargetError, match="in use"):
            trio.run(lambda: delta_restore_with(config, chain.ids[1], device))
    finally:
        os.close(holder)
    trio.run(lambda: delta_restore_with(config, chain.ids[1], device))
    with open(device, "rb") as f:
        assert f.read(SIZE) == chain.images[1]
    with pytest.raises(BackupNotFound):
        trio.run(lambda: delta_restore_with(config, "no-such-backup", device))
    with pytest.raises(TargetError, match="does not exist"):
        trio.run(lambda: delta_restore_with(config, chain.ids[1], str(tmp_path / "nothing")))


def bakfs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bakfs", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def cli_env(rgw: S3Server, s3_store: S3Store, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    env.update({**rgw.env(s3_store.bucket), "BAKFS_S3_OBJECT_SIZE": str(OBJECT),
                "BAKFS_S3_BLOCK_SIZE": str(BLOCK), "BAKFS_CACHE_PATH": str(tmp_path / "c"),
                "BAKFS_INDEX_PATH": str(tmp_path / "i")})
    return env


def test_the_commands_exit_codes_and_json(rgw: S3Server, s3_store: S3Store,
                                          tmp_path: Path) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=10), "vol-cli")
    env = cli_env(rgw, s3_store, tmp_path)
    target = tmp_path / "t.img"
    target.write_bytes(chain.images[0])
    differ = bakfs("verify-device", chain.ids[1], str(target), "--json", env=env)
    assert differ.returncode == 1, differ.stderr
    doc = json.loads(differ.stdout)
    assert not doc["identical"]
    assert [(r["offset"], r["length"]) for r in doc["ranges"]] == differing_ranges(
        chain.images[0], chain.images[1])
    text = bakfs("verify-device", chain.ids[1], str(target), env=env)
    assert text.returncode == 1 and "different:" in text.stdout and "differs: offset" in text.stdout
    dry = bakfs("restore", chain.ids[1], str(target), "--delta", "--dry-run", env=env)
    assert dry.returncode == 0 and "dry run" in dry.stdout
    assert target.read_bytes() == chain.images[0]
    done = bakfs("restore", chain.ids[1], str(target), "--delta", env=env)
    assert done.returncode == 0, done.stderr
    assert "by delta" in done.stdout and target.read_bytes() == chain.images[1]
    same = bakfs("verify-device", chain.ids[1], str(target), env=env)
    assert same.returncode == 0 and same.stdout.startswith("identical:")
    for args, message in (
            (("verify-device", "no-such-backup", str(target)), "no complete backup"),
            (("verify-device", chain.ids[1], str(tmp_path / "missing")), "does not exist")):
        failed = bakfs(*args, env=env)
        assert failed.returncode == 2 and message in failed.stderr
        assert "Traceback" not in failed.stderr
    wrong = bakfs("restore", chain.ids[1], str(target), "--dry-run", env=env)
    assert wrong.returncode == 2 and "--delta" in wrong.stderr


def test_progress_lines_follow_the_progress_timer(rgw: S3Server, s3_store: S3Store,
                                                  tmp_path: Path) -> None:
    """`s3.enable_progress_timer = false` silences the progress of restore, verify-device and
    delta as it does a backup's; the final JSON summary stays on stdout either way."""
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=12), "vol-timer")
    target = tmp_path / "t.img"
    target.write_bytes(chain.images[0])
    runs = {"restore": ("restore", chain.ids[1], str(tmp_path / "new.img"), "--json"),
            "verify": ("verify-device", chain.ids[1], str(target), "--json"),
            "delta": ("restore", chain.ids[1], str(target), "--delta", "--json")}
    for timer in ("true", "false"):
        env = {**cli_env(rgw, s3_store, tmp_path), "BAKFS_S3_ENABLE_PROGRESS_TIMER": timer}
        (tmp_path / "new.img").unlink(missing_ok=True)
        target.write_bytes(chain.images[0])
        for name, args in runs.items():
            done = bakfs(*args, env=env)
            assert done.returncode in (0, 1), done.stderr  # verify-device: 1 = differs
            assert json.loads(done.stdout)  # the summary
            lines = [json.loads(line) for line in done.stderr.splitlines()
                     if line.startswith("{")]
            if timer == "true":
                assert any("progress" in line for line in lines), (name, done.stderr)
            else:
                assert lines == [], (name, done.stderr)

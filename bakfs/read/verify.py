"""`verify`: is a backup sound? Every object it lists exists and decodes to its recorded
length and md5, nothing foreign lives under its prefix, and (deep) the volume reassembled
through its chain matches the `_sha256file` block by block.

It lives with the readers because it reads: every object is fetched and decoded as a read
would, and the deep check reassembles the volume with `read.simple`. Objects whose stored
bytes are the same (equal ETags in the listing, as the thousands of zero objects of a large
sparse volume are) are fetched once. Holes and zero objects are compared with the zero
block's digest in bulk, without hashing zeros. Memory does not grow with the volume: the
listing is read as it streams, objects are checked in batches, digests come from a spill file.

Blocking code; objects are checked in parallel worker threads.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

from bakfs.catalog.discovery import (
    BackupRef,
    find_backup,
    load_chain,
    load_sha256file,
)
from bakfs.cinder import naming
from bakfs.cinder.blockhash import sha256_blocks
from bakfs.cinder.extents import Digests, differing, zero_digests
from bakfs.cinder.metadata import BackupMetadata, ObjectEntry, ObjectTable
from bakfs.errors import BakfsError
from bakfs.read.simple import pieces
from bakfs.store.base import ObjectStore
from bakfs.store.decode import fetch_verified
from bakfs.threads import parallel_map

THREADS = 8
BATCH = 4096  # objects checked per round of threads
_ZEROS = bytes(1 << 20)


def verify(store: ObjectStore, backup_id: str, deep: bool = False,
           report: Callable[[str], None] = print) -> list[str]:
    """Check a backup; return one line per problem (empty when it is sound)."""
    ref = find_backup(store, backup_id)
    chain = load_chain(store, ref)
    metadata = chain[-1][1]
    objects = (metadata.objects if isinstance(metadata.objects, ObjectTable)
               else ObjectTable(metadata.objects))
    problems: list[str] = []
    # object n is usually named <prefix>-<n + 1>: only other names need a map
    odd = {entry.name: n for n, entry in enumerate(objects)
           if entry.name != naming.object_name(ref.prefix, n + 1)}
    etags = _Etags(len(objects))
    listed = bytearray(len(objects))
    documents = {ref.metadata_key, ref.sha256file_key}
    found_documents = set()
    for info in store.list(str(ref.prefix)):
        parsed = naming.parse_key(info.key)
        if parsed is None or parsed.prefix != ref.prefix:
            continue  # another backup whose id starts with this one's
        n = odd.get(info.key)
        if n is None and parsed.number is not None and 0 < parsed.number <= len(objects) \
                and info.key == naming.object_name(ref.prefix, parsed.number):
            n = parsed.number - 1
        if n is not None:
            listed[n] = 1
            etags.set(n, info.etag)
        elif info.key in documents:
            found_documents.add(info.key)
        else:
            problems.append(f"unexpected object {info.key} under the backup's prefix (Cinder "
                            "refuses to restore a backup with foreign objects)")
    problems[:0] = [f"missing object {objects[n].name}" for n in range(len(objects))
                    if not listed[n]]
    if ref.sha256file_key not in found_documents:
        problems.append(f"missing {ref.sha256file_key}")

    verified: set[tuple[str, str, int, str]] = set()  # (etag, codec, length, md5) fetched
    lock = threading.Lock()

    def check(n: int) -> str | None:
        entry = objects[n]
        if not listed[n]:
            return None
        etag = etags.get(n)
        same = (etag or "", entry.compression, entry.length, entry.md5)
        if etag and same in verified:
            return None  # the same stored bytes were fetched and decoded already
        try:
            fetch_verified(store, entry)
        except BakfsError as exc:
            return str(exc)
        if etag:
            with lock:
                verified.add(same)
        return None

    for start in range(0, len(objects), BATCH):
        batch = range(start, min(start + BATCH, len(objects)))
        problems += [result for result in parallel_map(check, batch, THREADS) if result]
    report(f"checked {len(objects)} objects of backup {backup_id} "
           f"({len(verified)} distinct stored bodies fetched)")
    if deep and not problems:
        problems += _deep_check(store, ref, [m for _r, m in chain], report)
    return problems


class _Etags:
    """The listing's ETag of each object, packed (16 bytes when it is an MD5)."""

    def __init__(self, count: int) -> None:
        self._packed = bytearray(16 * count)
        self._odd: dict[int, str] = {}

    def set(self, n: int, etag: str | None) -> None:
        if etag and len(etag) == 32:
            try:
                self._packed[16 * n:16 * n + 16] = bytes.fromhex(etag)
                return
            except ValueError:
                pass
        self._odd[n] = etag or ""

    def get(self, n: int) -> str:
        if n in self._odd:
            return self._odd[n]
        packed = self._packed[16 * n:16 * n + 16]
        return packed.hex() if any(packed) else ""


class _BlockChecker:
    """Takes the reassembled volume in order and compares each block's SHA-256 with the
    `_sha256file`; runs of zeros are compared with the zero block's digest in bulk."""

    def __init__(self, expected: Digests, block_size: int) -> None:
        self.expected = expected
        self.block_size = block_size
        self.buffer = bytearray()
        self.index = 0
        self.bad: list[int] = []  # the first blocks that differ
        self.bad_count = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self.buffer:
            take = min(len(view), self.block_size - len(self.buffer))
            self.buffer += view[:take]
            view = view[take:]
            if len(self.buffer) == self.block_size:
                self._compare_packed(hashlib.sha256(self.buffer).digest(), 1)
                self.buffer.clear()
        whole = len(view) - len(view) % self.block_size
        if whole:
            self._compare_packed(sha256_blocks(view[:whole], self.block_size),
                                 whole // self.block_size)
        self.buffer += view[whole:]

    def zeros(self, length: int) -> None:
        if self.buffer:
            take = min(length, self.block_size - len(self.buffer))
            self.write(_ZEROS[:take] if take <= len(_ZEROS) else bytes(take))
            length -= take
        blocks, tail = divmod(length, self.block_size)
        zero = zero_digests(self.block_size, self.block_size)
        while blocks:
            n = min(blocks, 1 << 15)
            self._compare_packed(zero * n, n)
            blocks -= n
        if tail:
            self.buffer += bytes(tail)

    def _compare_packed(self, packed: bytes, count: int) -> None:
        bad = differing(packed, self.expected.block_range(self.index, count))
        self.bad_count += len(bad)
        self.bad += [self.index + i for i in bad[:20 - len(self.bad)]]
        self.index += count

    def finish(self) -> None:
        if self.buffer:
            self._compare_packed(hashlib.sha256(self.buffer).digest(), 1)
            self.buffer.clear()


def _deep_check(store: ObjectStore, ref: BackupRef, chain: list[BackupMetadata],
                report: Callable[[str], None]) -> list[str]:
    sha = load_sha256file(store, ref)
    try:
        checker = _BlockChecker(sha.sha256s, sha.chunk_size)
        cached: tuple[str, bytes] | None = None
        for piece in pieces(chain):
            if piece.entry is None:
                checker.zeros(piece.length)
                continue
            entry: ObjectEntry = piece.entry
            if cached is None or cached[0] != entry.name:
                cached = (entry.name, fetch_verified(store, entry))
            checker.write(memoryview(cached[1])[piece.inner:piece.inner + piece.length])
        checker.finish()
        expected_blocks = len(sha.sha256s)
    finally:
        sha.sha256s.close()
    problems = [f"block {i} (offset {i * sha.chunk_size}) differs from the sha256file"
                for i in checker.bad]
    if checker.bad_count > len(checker.bad):
        problems.append(f"... and {checker.bad_count - len(checker.bad)} more blocks differ")
    if checker.index != expected_blocks:
        problems.append(f"the volume has {checker.index} blocks, the sha256file lists "
                        f"{expected_blocks}")
    report(f"reassembled {checker.index} blocks and compared them with the sha256file")
    return problems

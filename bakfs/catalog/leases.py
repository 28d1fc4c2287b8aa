"""One writer per volume: a lease object in the store, taken with a conditional PUT.

It lives in the catalogue because it answers a question about which backups exist: whether
an incomplete backup is still being written (`gc` must leave that one alone) or is the orphan
of a dead writer. The backup writers take it; `gc` reads it.

The lease lives at `bakfs-locks/<volume_id>`, outside every backup's prefix (Cinder refuses a
backup with foreign keys under its prefix). It is created with `If-None-Match: *`, renewed and
taken over with `If-Match: <etag>`, so two writers can never both believe they hold it. A
lease that was not renewed before it expired (its writer crashed) may be taken over, so a
crash never blocks a volume forever.

A live writer renews its lease every minute and records when (`renewed`). A lease not renewed
for STALE_AFTER seconds belongs to no live writer, even when its holder's process is still
there (a mount whose backup failed while the store was out of its reach cannot delete the
lease, and stopped renewing it the moment the backup failed): `gc` treats its backup as an
orphan, taking the lease over before it deletes anything, and a new writer takes it over.
A writer that fails releases its lease (`release`), and `held` tells whether that worked, so
the mount can try again as soon as the store allows.

Blocking code: it calls the store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time

from bakfs.errors import AlreadyExists, BadMetadata, LeaseLost, ObjectMissing, VolumeBusy
from bakfs.procfs import process_identity
from bakfs.store.base import ObjectStore
from bakfs.store.streams import get_document

log = logging.getLogger(__name__)

LOCK_PREFIX = "bakfs-locks/"
DEFAULT_TTL = 600.0
STALE_AFTER = DEFAULT_TTL / 2  # five renewals missed: no live writer holds it
LEASE_LIMIT = 16 << 10  # a lease is ~200 bytes; a larger object under its key is not read


@dataclasses.dataclass(frozen=True)
class LeaseInfo:
    owner: str
    backup_id: str
    expires: float
    renewed: float | None = None  # when its holder last wrote it (None: an older bakfs)

    def live(self, now: float | None = None) -> bool:
        """Whether a writer may still be making its backup: not expired, renewed lately,
        and not a process of this host that is gone."""
        now = time.time() if now is None else now
        if self.expires <= now or holder_is_dead(self.owner):
            return False
        return self.renewed is None or now - self.renewed < STALE_AFTER

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        renewed = (f"renewed {now - self.renewed:.0f} s ago" if self.renewed is not None
                   else "never renewed")
        return f"lease of {self.owner} for backup {self.backup_id}, {renewed}"


def holder_is_dead(owner: str) -> bool:
    """True when the lease holder ran on this host and that process is gone: its lease can be
    taken at once instead of waiting for it to expire (a writer killed with -9)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return process_identity(int(pid_text)) != owner


def lock_key(volume_id: str) -> str:
    return f"{LOCK_PREFIX}{volume_id}"


class VolumeLease:
    """The right to write backups of one volume, held until `release`."""

    def __init__(self, store: ObjectStore, volume_id: str, backup_id: str,
                 ttl: float = DEFAULT_TTL) -> None:
        self.store = store
        self.volume_id = volume_id
        self.backup_id = backup_id
        self.ttl = ttl
        self.owner = process_identity()
        self.held = False  # acquired and not yet released
        self._etag: str | None = None

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "backup_id": self.backup_id,
                           "expires": now + self.ttl, "renewed": now}).encode()

    def acquire(self) -> None:
        """Take the lease, or raise VolumeBusy naming the holder."""
        key = lock_key(self.volume_id)
        try:
            self.store.put(key, self._body(), if_absent=True)
        except AlreadyExists:
            holder, etag = self._read()
            if holder is not None and holder.live():
                raise VolumeBusy(
                    f"volume {self.volume_id} is being backed up by {holder.owner} (backup "
                    f"{holder.backup_id}); its lease expires in "
                    f"{holder.expires - time.time():.0f} s") from None
            log.warning("taking over the stale lease of volume %s from %s", self.volume_id,
                        holder.owner if holder else "an unreadable lease")
            try:
                if etag is None:
                    self.store.put(key, self._body(), if_absent=True)
                else:
                    self.store.put(key, self._body(), if_match=etag)
            except AlreadyExists:
                raise VolumeBusy(f"volume {self.volume_id}: another writer took the expired "
                                 "lease first") from None
        self._etag = self.store.head(key).etag
        self.held = True

    def renew(self) -> None:
        """Extend the lease; LeaseLost if someone took it over meanwhile."""
        key = lock_key(self.volume_id)
        try:
            self.store.put(key, self._body(), if_match=self._etag)
        except (AlreadyExists, ObjectMissing):
            raise LeaseLost(f"the lease on volume {self.volume_id} was taken over; backup "
                            f"{self.backup_id} is abandoned") from None
        self._etag = self.store.head(key).etag

    def release(self) -> None:
        """Give the lease up (only if it is still ours). A store error leaves `held` true
        and is raised: the caller may try again later."""
        key = lock_key(self.volume_id)
        try:
            if self.store.head(key).etag == self._etag:
                self.store.delete(key)
        except ObjectMissing:
            pass
        self.held = False

    def _read(self) -> tuple[LeaseInfo | None, str | None]:
        return read_lease(self.store, self.volume_id)


def live_lease(store: ObjectStore, volume_id: str) -> LeaseInfo | None:
    """The lease of a writer that may still be running, if there is one."""
    holder, _etag = read_lease(store, volume_id)
    return holder if holder is not None and holder.live() else None


def take_over(store: ObjectStore, volume_id: str, etag: str, backup_id: str) -> str | None:
    """Make a lease that is no live writer's ours (for `gc`, before it deletes that backup's
    objects), as a writer would: atomically, only if it is still that version. Returns the
    new etag, or None when it changed meanwhile (its writer renewed it: hands off)."""
    now = time.time()
    body = json.dumps({"owner": process_identity(), "backup_id": backup_id, "gc": True,
                       "expires": now + DEFAULT_TTL, "renewed": now}).encode()
    try:
        return store.put(lock_key(volume_id), body, if_match=etag) or store.head(
            lock_key(volume_id)).etag
    except (AlreadyExists, ObjectMissing):
        return None


def drop(store: ObjectStore, volume_id: str, etag: str | None) -> None:
    """Delete a lease if it is still that version."""
    key = lock_key(volume_id)
    try:
        if store.head(key).etag == etag:
            store.delete(key)
    except ObjectMissing:
        pass


def read_lease(store: ObjectStore, volume_id: str) -> tuple[LeaseInfo | None, str | None]:
    """The lease object's content and etag: (None, None) when there is none, (None, etag) when
    it cannot be read as a lease (damaged, or larger than any lease: read no further than
    LEASE_LIMIT)."""
    key = lock_key(volume_id)
    try:
        info = store.head(key)
        doc = json.loads(get_document(store, key, LEASE_LIMIT, "lease"))
        renewed = doc.get("renewed")
        return LeaseInfo(str(doc["owner"]), str(doc["backup_id"]), float(doc["expires"]),
                         None if renewed is None else float(renewed)), info.etag
    except ObjectMissing:
        return None, None
    except (BadMetadata, ValueError, KeyError, TypeError, AttributeError):
        return None, store.head(key).etag

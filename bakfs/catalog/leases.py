"""One writer per volume: a lease object in the store, taken with a conditional PUT.

It lives in the catalogue because it answers a question about which backups exist: whether
an incomplete backup is still being written (`gc` must leave that one alone) or is the orphan
of a dead writer. The backup writers take it; `gc` reads it.

The lease lives at `bakfs-locks/<volume_id>`, outside every backup's prefix (Cinder refuses a
backup with foreign keys under its prefix). It is created with `If-None-Match: *`, renewed and
taken over with `If-Match: <etag>`, so two writers can never both believe they hold it. A
lease that was not renewed before it expired (its writer crashed) may be taken over, so a
crash never blocks a volume forever.

Blocking code: it calls the store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time

from bakfs.errors import AlreadyExists, LeaseLost, ObjectMissing, VolumeBusy
from bakfs.procfs import process_identity
from bakfs.store.base import ObjectStore

log = logging.getLogger(__name__)

LOCK_PREFIX = "bakfs-locks/"
DEFAULT_TTL = 600.0


@dataclasses.dataclass(frozen=True)
class LeaseInfo:
    owner: str
    backup_id: str
    expires: float


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
        self._etag: str | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "backup_id": self.backup_id,
                           "expires": time.time() + self.ttl}).encode()

    def acquire(self) -> None:
        """Take the lease, or raise VolumeBusy naming the holder."""
        key = lock_key(self.volume_id)
        try:
            self.store.put(key, self._body(), if_absent=True)
        except AlreadyExists:
            holder, etag = self._read()
            if holder is not None and holder.expires > time.time() \
                    and not holder_is_dead(holder.owner):
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
        """Give the lease up (only if it is still ours)."""
        key = lock_key(self.volume_id)
        try:
            if self.store.head(key).etag == self._etag:
                self.store.delete(key)
        except ObjectMissing:
            pass

    def _read(self) -> tuple[LeaseInfo | None, str | None]:
        return read_lease(self.store, self.volume_id)


def live_lease(store: ObjectStore, volume_id: str) -> LeaseInfo | None:
    """The lease of a writer that may still be running, if there is one."""
    holder, _etag = read_lease(store, volume_id)
    if holder is None or holder.expires <= time.time() or holder_is_dead(holder.owner):
        return None
    return holder


def read_lease(store: ObjectStore, volume_id: str) -> tuple[LeaseInfo | None, str | None]:
    """The lease object's content and etag ((None, None) when there is none)."""
    key = lock_key(volume_id)
    try:
        info = store.head(key)
        doc = json.loads(store.get(key))
        return LeaseInfo(str(doc["owner"]), str(doc["backup_id"]),
                         float(doc["expires"])), info.etag
    except ObjectMissing:
        return None, None
    except (ValueError, KeyError, TypeError):
        return None, store.head(key).etag

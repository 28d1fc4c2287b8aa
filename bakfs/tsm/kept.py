"""The index's copy of the TSM records' last listing. The records are not in the index's
backup rows (they live under `bakfs-tsm/`, outside Cinder's prefixes), so the copy is what
lets a re-mount and `ls --cached` show TSM backups before or without the store, and a
listing GET only the records it has not seen (a record is never rewritten).

One piece for the mount and for `ls`. Async, on trio: the store and the index are reached
through the Catalog and its Bridge.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable

from bakfs.catalog.front import Catalog
from bakfs.errors import BadMetadata, FormatError
from bakfs.tsm.records import TsmRecord, list_records, record_key

log = logging.getLogger(__name__)

KEPT_NAME = b"tsm-records"


async def read_kept(catalog: Catalog) -> list[TsmRecord] | None:
    """The records as last kept; None when the index kept none (new or rebuilt) or its copy
    is unreadable (logged; the next listing replaces it)."""
    document = await catalog.kept(KEPT_NAME)
    if document is None:
        return None
    try:
        return await catalog.bridge.run_cpu(_from_json, document)
    except BadMetadata as exc:
        log.warning("%s; listing them from the store", exc)
        return None


async def list_and_keep(catalog: Catalog, volume_id: str | None,
                        kept: list[TsmRecord] | None,
                        seen: Iterable[TsmRecord] = ()) -> list[TsmRecord]:
    """The TSM records (of one volume, or all), GETting only those neither `kept` nor
    `seen` holds; a whole listing that differs from `kept` (the index's copy) is kept."""
    known = [*(kept or ()), *seen]
    records = await catalog.bridge.run_s3(
        functools.partial(list_records, catalog.store, volume_id, known=known))
    if volume_id is None and records != kept:
        await catalog.keep(KEPT_NAME, await catalog.bridge.run_cpu(_to_json, records))
    return records


def _to_json(records: list[TsmRecord]) -> bytes:
    return json.dumps([record.as_dict() for record in records]).encode()


def _from_json(data: bytes) -> list[TsmRecord]:
    try:
        docs = json.loads(data)
        if not isinstance(docs, list):
            raise ValueError("not a list")
        return [TsmRecord.from_dict(doc, record_key(str(doc["volume_id"]),
                                                    str(doc["backup_id"]))) for doc in docs]
    except (ValueError, KeyError, TypeError, FormatError) as exc:
        raise BadMetadata(f"the index's copy of the TSM records is unreadable: {exc}") from None

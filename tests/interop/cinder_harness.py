#!/usr/bin/env python3
"""Drive real OpenStack Cinder's S3 backup driver without a Cinder deployment.

Run with the Python of the venv made by ``scripts/cinder-venv.sh`` (``cinder==29.0.0``); this
program must not import bakfs. It runs Cinder's own ``S3BackupDriver.backup()`` and
``.restore()`` against a real S3 server, so tests can check both directions of compatibility:
bakfs reads what Cinder wrote, Cinder restores what bakfs wrote.

Subcommands (JSON result on stdout, diagnostics on stderr, exit status 0 only on success)::

    backup     --volume-file F --volume-id V --backup-id B
               [--parent-id P --parent-prefix PP [--parent-container C]]
               [--container C] [--name N] [--description D]
    restore    --volume-file OUT --chain CHAIN_JSON|@path --backup-id B
               [--volume-is-new] [--size BYTES] [--target-volume-id T]
    delete     --backup-id B --volume-id V --prefix P [--container C]
    import-url --backup-url URL [--backup-service NAME]

Configuration comes only from the environment, so that secrets never appear in ``ps``:
BAKFS_S3_ENDPOINT_URL, BAKFS_S3_BUCKET (volumebackups), BAKFS_S3_ACCESS_KEY, BAKFS_S3_SECRET_KEY,
BAKFS_S3_SSE_CUSTOMER_KEY, BAKFS_S3_SSE_CUSTOMER_ALGORITHM, BAKFS_S3_OBJECT_SIZE (52428800),
BAKFS_S3_BLOCK_SIZE (32768), BAKFS_S3_COMPRESSION (zlib), BAKFS_S3_MD5_VALIDATION (true),
BAKFS_HARNESS_DEBUG (unset; 1 = Cinder debug logging and tracebacks on stderr).

How Cinder is made to run without its database and services: everything the driver touches is
real (oslo.config options, ``objects.Backup`` versioned objects with their ``get_by_id`` /
``save`` / ``refresh``, ``BackupMetadataAPI``, boto3), except for the lowest layer:

* ``FakeCinderDB`` replaces the few ``cinder.db.api`` functions that this code path calls with
  in-memory tables (see its docstring for the list and the reason for each), and the database
  connection is set to an unloadable URL so any other DB access fails loudly instead of quietly
  creating a SQLite file.
* ``volume_utils.notify_about_backup_usage`` becomes a no-op: it publishes Ceilometer progress
  notifications over oslo.messaging, which needs a message bus; it has no effect on the data.
* The periodic progress timer (``backup_s3_enable_progress_timer``) is switched off for the same
  reason.
* Eventlet is not monkey-patched, so Cinder 29 runs in its native-thread mode:
  ``utils.tpool_wrap`` returns objects unwrapped and ``cooperative_yield`` does nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn

# Cinder imports eventlet, which warns on import that it is deprecated; that is noise here.
warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

import cinder.common.config  # noqa: E402, F401  (registers storage_availability_zone etc.)
from cinder import context as cinder_context  # noqa: E402
from cinder import exception, objects  # noqa: E402
from cinder.backup.drivers import s3 as s3_driver  # noqa: E402
from cinder.db import api as db_api  # noqa: E402
from cinder.db import models  # noqa: E402
from cinder.objects import fields as c_fields  # noqa: E402
from cinder.volume import volume_utils  # noqa: E402
from oslo_config import cfg  # noqa: E402
from oslo_utils import strutils, timeutils  # noqa: E402

GIB = 1024**3
DRIVER_NAME = "cinder.backup.drivers.s3.S3BackupDriver"
HARNESS_HOST = "bakfs-harness"
HARNESS_USER = "bakfs-harness-user"
HARNESS_PROJECT = "bakfs-harness-project"
# Keys the backup-import path requires in a decoded backup_url: the API checks id and size
# (cinder/backup/api.py _get_import_backup), the manager the rest (manager.import_record).
API_REQUIRED_IMPORT_KEYS = ("id", "size")
MANAGER_REQUIRED_IMPORT_KEYS = (
    "display_name",
    "display_description",
    "container",
    "size",
    "service_metadata",
    "object_count",
    "id",
)
# Keys the backup manager drops from an imported record before applying it.
MANAGER_DROPPED_IMPORT_KEYS = (
    "name",
    "user_id",
    "project_id",
    "deleted_at",
    "deleted",
    "fail_reason",
    "status",
)
# IMPORT_VOLUME_ID of cinder/backup/api.py: the volume_id an imported row gets unless given.
IMPORT_VOLUME_ID = "00000000-0000-0000-0000-000000000000"

log = logging.getLogger("bakfs.cinder_harness")


class HarnessError(Exception):
    """A usage or input problem; reported on stderr without a traceback."""


# --------------------------------------------------------------------------------------------
# Configuration from the environment


@dataclass(frozen=True)
class S3Settings:
    """The backup service configuration, read from BAKFS_S3_* environment variables."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    sse_customer_key: str | None
    sse_customer_algorithm: str | None
    object_size: int
    block_size: int
    compression: str
    md5_validation: bool

    @classmethod
    def from_environ(cls, env: dict[str, str]) -> S3Settings:
        def required(name: str) -> str:
            value = env.get(name, "")
            if not value:
                raise HarnessError(f"environment variable {name} must be set")
            return value

        def integer(name: str, default: int) -> int:
            raw = env.get(name, "") or str(default)
            try:
                return int(raw)
            except ValueError:
                raise HarnessError(f"{name}={raw!r} is not an integer") from None

        md5_raw = env.get("BAKFS_S3_MD5_VALIDATION", "") or "true"
        try:
            md5_validation = strutils.bool_from_string(md5_raw, strict=True)
        except ValueError:
            raise HarnessError(f"BAKFS_S3_MD5_VALIDATION={md5_raw!r} is not a boolean") from None
        return cls(
            endpoint_url=required("BAKFS_S3_ENDPOINT_URL"),
            bucket=env.get("BAKFS_S3_BUCKET", "") or "volumebackups",
            access_key=required("BAKFS_S3_ACCESS_KEY"),
            secret_key=required("BAKFS_S3_SECRET_KEY"),
            sse_customer_key=env.get("BAKFS_S3_SSE_CUSTOMER_KEY") or None,
            sse_customer_algorithm=env.get("BAKFS_S3_SSE_CUSTOMER_ALGORITHM") or None,
            object_size=integer("BAKFS_S3_OBJECT_SIZE", 52428800),
            block_size=integer("BAKFS_S3_BLOCK_SIZE", 32768),
            compression=env.get("BAKFS_S3_COMPRESSION", "") or "zlib",
            md5_validation=md5_validation,
        )


def isolate_environment() -> None:
    """Keep the caller's shell from changing how boto3 talks to the server.

    The driver passes endpoint and keys explicitly, but botocore also reads AWS_* variables
    (AWS_ENDPOINT_URL_S3, AWS_CA_BUNDLE, profiles, ~/.aws/config) and the usual proxy variables;
    a real Cinder backup service would not have those. The server is always on loopback.
    """
    for name in list(os.environ):
        if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            del os.environ[name]
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


def configure_cinder(settings: S3Settings | None) -> None:
    """Initialise oslo.config the way cinder-backup would, but from no config file at all."""
    conf = cfg.CONF
    conf([], project="cinder", default_config_files=[], default_config_dirs=[])
    # Any DB call that FakeCinderDB does not cover must fail, not create a SQLite file under
    # $state_path (Cinder's default connection): SQLAlchemy cannot load this dialect.
    conf.set_override("connection", "nodatabase_in_bakfs_harness://", group="database")
    objects.register_all()
    if settings is None:
        return
    overrides: dict[str, Any] = {
        "backup_s3_endpoint_url": settings.endpoint_url,
        "backup_s3_store_bucket": settings.bucket,
        "backup_s3_store_access_key": settings.access_key,
        "backup_s3_store_secret_key": settings.secret_key,
        "backup_s3_sse_customer_key": settings.sse_customer_key,
        "backup_s3_sse_customer_algorithm": settings.sse_customer_algorithm,
        "backup_s3_object_size": settings.object_size,
        "backup_s3_block_size": settings.block_size,
        "backup_s3_md5_validation": settings.md5_validation,
        # Validated by oslo.config against Cinder's choices (none/off/no/zlib/gzip/bz2/...).
        "backup_compression_algorithm": settings.compression,
        # The timer only sends Ceilometer notifications (see module docstring).
        "backup_s3_enable_progress_timer": False,
        # Certificate verification means nothing for http:// endpoints, and left on it only
        # makes the driver warn "no cert file was provided" on every run.
        "backup_s3_verify_ssl": not settings.endpoint_url.startswith("http://"),
        "host": HARNESS_HOST,
    }
    for name, value in overrides.items():
        try:
            conf.set_override(name, value)
        except ValueError as err:
            raise HarnessError(f"invalid value for Cinder option {name}: {err}") from None


# --------------------------------------------------------------------------------------------
# The in-memory stand-in for Cinder's database


class FakeVolumeRow:
    """A volumes-table row as Cinder's DB layer returns it.

    Callers use it like oslo.db's ``ModelBase``: ``row['size']``, ``row.get(key)``, and -- in
    ``BackupMetadataAPI._save_vol_base_meta`` -- ``for key, value in row``, which is why this is
    not a plain dict (iterating a dict yields keys only).
    """

    def __init__(self, columns: dict[str, Any]) -> None:
        self.columns = columns

    def __getitem__(self, key: str) -> Any:
        return self.columns[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.columns.get(key, default)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(list(self.columns.items()))


class FakeCinderDB:
    """In-memory tables behind the ``cinder.db.api`` functions the S3 driver path calls.

    Patched functions and who calls them:

    * ``dispose_engine`` -- ``cinder.db.base.Base.__init__`` (inherited by the driver and by
      ``BackupMetadataAPI``) calls it; it would build a SQLAlchemy engine.
    * ``get_by_id`` -- ``objects.Backup.get_by_id``, used for the parent backup (incremental
      backup), for every parent layer of a restore chain, and by ``backup.refresh()``, which the
      driver calls before every chunk (backup) and object (restore) to notice cancellation.
    * ``backup_update`` -- ``objects.Backup.save()``; the driver saves the container, the
      object prefix (``service_metadata``) and ``object_count``.
    * ``volume_get``, ``volume_metadata_get``, ``volume_glance_metadata_get`` -- volume size in
      ``_prepare_backup`` and the ``volume_meta`` JSON built by ``BackupMetadataAPI.get``.
    * ``volume_update``, ``volume_metadata_update``, ``volume_glance_metadata_delete_by_volume``,
      ``volume_glance_metadata_create``, ``volume_type_get`` -- ``BackupMetadataAPI.put``, which
      restore calls with each layer's ``volume_meta``; the updates are recorded so the caller
      can see what Cinder would have changed on the target volume.
    """

    def __init__(self) -> None:
        self.backups: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, FakeVolumeRow] = {}
        self.volume_metadata: dict[str, dict[str, str]] = {}
        self.glance_metadata: dict[str, dict[str, Any]] = {}
        self.volume_updates: list[dict[str, Any]] = []

    def install(self) -> None:
        patches: dict[str, Callable[..., Any]] = {
            "dispose_engine": self.dispose_engine,
            "get_by_id": self.get_by_id,
            "backup_update": self.backup_update,
            "volume_get": self.volume_get,
            "volume_metadata_get": self.volume_metadata_get,
            "volume_glance_metadata_get": self.volume_glance_metadata_get,
            "volume_update": self.volume_update,
            "volume_metadata_update": self.volume_metadata_update,
            "volume_glance_metadata_delete_by_volume": self.volume_glance_metadata_delete,
            "volume_glance_metadata_create": self.volume_glance_metadata_create,
            "volume_type_get": self.volume_type_get,
        }
        for name, replacement in patches.items():
            if not hasattr(db_api, name):
                # A future Cinder renamed it: fail here rather than silently use the real DB.
                raise RuntimeError(f"cinder.db.api has no function {name}")
            setattr(db_api, name, replacement)
        # The driver's progress notifications need an oslo.messaging notifier (a message bus).
        volume_utils.notify_about_backup_usage = _ignore_notification

    # -- rows

    def add_volume(self, volume_id: str, size_gib: int, **columns: Any) -> None:
        now = timeutils.utcnow()
        row: dict[str, Any] = {
            "id": volume_id,
            "size": size_gib,
            "status": "available",
            "previous_status": None,
            "display_name": f"vol-{volume_id[:8]}",
            "display_description": None,
            "availability_zone": "nova",
            "host": f"{HARNESS_HOST}@fake#fake",
            "user_id": HARNESS_USER,
            "project_id": HARNESS_PROJECT,
            "attach_status": "detached",
            "bootable": False,
            "multiattach": False,
            "volume_type_id": None,
            "encryption_key_id": None,
            "replication_status": None,
            "use_quota": True,
            "created_at": now,
            "updated_at": None,
            "deleted_at": None,
            "deleted": False,
        }
        row.update(columns)
        self.volumes[volume_id] = FakeVolumeRow(row)
        self.volume_metadata[volume_id] = {}

    def add_backup(self, backup_id: str, volume_id: str, **columns: Any) -> None:
        # MySQL DATETIME columns (Cinder's models use sa.DateTime) keep whole seconds.
        now = timeutils.utcnow().replace(microsecond=0)
        row: dict[str, Any] = {
            "id": backup_id,
            "user_id": HARNESS_USER,
            "project_id": HARNESS_PROJECT,
            "volume_id": volume_id,
            "host": HARNESS_HOST,
            "availability_zone": cfg.CONF.storage_availability_zone,
            "container": None,
            "parent_id": None,
            "status": c_fields.BackupStatus.AVAILABLE,
            "fail_reason": None,
            "size": 0,
            "display_name": None,
            "display_description": None,
            "service_metadata": None,
            "service": DRIVER_NAME,
            "object_count": 0,
            "temp_volume_id": None,
            "temp_snapshot_id": None,
            "num_dependent_backups": 0,
            "snapshot_id": None,
            "data_timestamp": now,
            "restore_volume_id": None,
            "encryption_key_id": None,
            "created_at": now,
            "updated_at": None,
            "deleted_at": None,
            "deleted": False,
            # Backup._from_db_object insists on this relationship being loaded (may be empty).
            "backup_metadata": [],
        }
        row.update(columns)
        self.backups[backup_id] = row

    # -- cinder.db.api replacements (signatures follow cinder/db/api.py)

    def dispose_engine(self) -> None:
        return None

    def get_by_id(self, context: Any, model: Any, id: str, *args: Any, **kwargs: Any) -> Any:
        if model is not models.Backup:
            raise NotImplementedError(f"harness has no {model.__name__} table")
        try:
            return dict(self.backups[id])
        except KeyError:
            raise exception.BackupNotFound(backup_id=id) from None

    def backup_update(self, context: Any, backup_id: str, values: dict[str, Any]) -> None:
        if backup_id not in self.backups:
            raise exception.BackupNotFound(backup_id=backup_id)
        self.backups[backup_id].update(values, updated_at=timeutils.utcnow())

    def volume_get(self, context: Any, volume_id: str) -> FakeVolumeRow:
        try:
            return self.volumes[volume_id]
        except KeyError:
            raise exception.VolumeNotFound(volume_id=volume_id) from None

    def volume_metadata_get(self, context: Any, volume_id: str) -> dict[str, str]:
        self.volume_get(context, volume_id)
        return dict(self.volume_metadata[volume_id])

    def volume_glance_metadata_get(self, context: Any, volume_id: str) -> list[Any]:
        # Real Cinder raises this when a volume was not created from an image.
        if not self.glance_metadata.get(volume_id):
            raise exception.GlanceMetadataNotFound(id=volume_id)
        raise NotImplementedError("harness volumes carry no Glance metadata")

    def volume_update(self, context: Any, volume_id: str, values: dict[str, Any]) -> None:
        self.volume_get(context, volume_id).columns.update(values)
        self.volume_updates.append({"table": "volumes", "values": dict(values)})

    def volume_metadata_update(
        self, context: Any, volume_id: str, metadata: dict[str, str], delete: bool, *args: Any
    ) -> dict[str, str]:
        current = {} if delete else dict(self.volume_metadata[volume_id])
        current.update(metadata)
        self.volume_metadata[volume_id] = current
        self.volume_updates.append({"table": "volume_metadata", "values": dict(metadata)})
        return current

    def volume_glance_metadata_delete(self, context: Any, volume_id: str) -> None:
        self.glance_metadata.pop(volume_id, None)

    def volume_glance_metadata_create(
        self, context: Any, volume_id: str, key: str, value: Any
    ) -> None:
        self.glance_metadata.setdefault(volume_id, {})[key] = value
        self.volume_updates.append({"table": "volume_glance_metadata", "values": {key: value}})

    def volume_type_get(self, context: Any, id: str, *args: Any, **kwargs: Any) -> NoReturn:
        raise exception.VolumeTypeNotFound(volume_type_id=id)


def _ignore_notification(*args: Any, **kwargs: Any) -> None:
    return None


# --------------------------------------------------------------------------------------------
# Subcommands


def size_in_gib(size_bytes: int) -> int:
    """Cinder volume sizes are whole GiB; a harness volume file may have any byte size."""
    return max(1, math.ceil(size_bytes / GIB))


def make_driver(ctx: Any) -> Any:
    driver = s3_driver.S3BackupDriver(ctx)
    # The backup manager calls this once when the service starts (ListBuckets, option checks).
    driver.check_for_setup_error()
    return driver


def cmd_backup(args: argparse.Namespace, settings: S3Settings) -> dict[str, Any]:
    size_bytes = os.path.getsize(args.volume_file)
    if size_bytes == 0:
        raise HarnessError(f"{args.volume_file} is empty; Cinder volumes have a size >= 1 GiB")
    if (args.parent_id is None) != (args.parent_prefix is None):
        raise HarnessError("--parent-id and --parent-prefix go together")
    size_gib = size_in_gib(size_bytes)
    ctx = cinder_context.get_admin_context()
    db = FakeCinderDB()
    db.install()
    # The volume row: the driver reads its size; BackupMetadataAPI turns it into volume_meta.
    db.add_volume(args.volume_id, size_gib, status="backing-up", previous_status="available")
    if args.parent_id is not None:
        # Incremental: Cinder loads the parent row for its container and prefix, reads the
        # parent's _sha256file, and refuses if backup.size > parent.size; both are the volume's
        # size in GiB here, as they would be for an unchanged volume.
        db.add_backup(
            args.parent_id,
            args.volume_id,
            container=args.parent_container or settings.bucket,
            service_metadata=args.parent_prefix,
            size=size_gib,
        )
    # The new row as the API creates it: status creating, size = volume size, container as the
    # user gave it (None: the driver stores backup_s3_store_bucket into it).
    db.add_backup(
        args.backup_id,
        args.volume_id,
        status=c_fields.BackupStatus.CREATING,
        container=args.container,
        parent_id=args.parent_id,
        size=size_gib,
        display_name=args.name,
        display_description=args.description,
    )
    backup = objects.Backup.get_by_id(ctx, args.backup_id)
    driver = make_driver(ctx)
    with open(args.volume_file, "rb") as volume_file:
        # The manager passes utils.tpool_wrap(file), which is the file itself without eventlet.
        driver.backup(backup, volume_file)
    # What BackupManager._finish_backup does next.
    backup.status = c_fields.BackupStatus.AVAILABLE
    backup.size = size_gib
    backup.save()
    # What BackupManager.export_record would hand out for this backup.
    backup_url = backup.encode_record(driver_info=driver.export_record(backup))
    return {
        "backup_id": backup.id,
        "volume_id": backup.volume_id,
        "parent_id": backup.parent_id,
        "prefix": backup.service_metadata,
        "object_count": backup.object_count,
        "container": backup.container,
        "size_gib": backup.size,
        "size_bytes": size_bytes,
        "backup_service": DRIVER_NAME,
        "backup_url": backup_url,
    }


@dataclass(frozen=True)
class ChainEntry:
    backup_id: str
    volume_id: str
    prefix: str
    parent_id: str | None
    container: str | None


def parse_chain(text: str) -> dict[str, ChainEntry]:
    """Parse --chain: a JSON list (or @file) of backup rows, in any order."""
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as chain_file:
            text = chain_file.read()
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise HarnessError(f"--chain is not valid JSON: {err}") from None
    if not isinstance(raw, list) or not raw:
        raise HarnessError("--chain must be a non-empty JSON list")
    entries: dict[str, ChainEntry] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise HarnessError(f"--chain item is not an object: {item!r}")
        missing = [key for key in ("backup_id", "volume_id", "prefix") if not item.get(key)]
        if missing:
            raise HarnessError(f"--chain item {item!r} lacks {', '.join(missing)}")
        entry = ChainEntry(
            backup_id=item["backup_id"],
            volume_id=item["volume_id"],
            prefix=item["prefix"],
            parent_id=item.get("parent_id") or None,
            container=item.get("container") or None,
        )
        if entry.backup_id in entries:
            raise HarnessError(f"--chain lists backup {entry.backup_id} twice")
        entries[entry.backup_id] = entry
    return entries


def chain_layers(entries: dict[str, ChainEntry], backup_id: str) -> list[ChainEntry]:
    """The layers Cinder will apply, oldest (the full backup) first."""
    layers: list[ChainEntry] = []
    current: str | None = backup_id
    while current is not None:
        if current not in entries:
            raise HarnessError(f"backup {current} is not in --chain")
        if any(layer.backup_id == current for layer in layers):
            raise HarnessError(f"--chain has a parent cycle through {current}")
        layers.append(entries[current])
        current = entries[current].parent_id
    layers.reverse()
    return layers


def open_target(path: str, size_bytes: int, volume_is_new: bool) -> IO[bytes]:
    """Open the restore target like a block device: fixed size, never truncated by opening.

    (The manager opens the attached device with mode 'wb'; on a block device that does not
    truncate. On a regular file it would, so the target is opened 'r+b' instead.) A new volume
    reads as zeros, which is what Cinder's zero-skipping for new volumes relies on.
    """
    if volume_is_new or not os.path.exists(path):
        target = open(path, "w+b")  # noqa: SIM115 - returned to the caller, who closes it
        target.truncate(size_bytes)
        return target
    existing = os.path.getsize(path)
    if existing != size_bytes:
        log.warning("%s has %d bytes, the backup's volume %d", path, existing, size_bytes)
    return open(path, "r+b")


def volume_bytes_from_metadata(metadata: dict[str, Any]) -> int:
    """A full backup's objects tile the volume, so its size is the end of the last one."""
    ends = [
        info["offset"] + info["length"] for entry in metadata["objects"] for info in entry.values()
    ]
    return max(ends, default=0)


def cmd_restore(args: argparse.Namespace, settings: S3Settings) -> dict[str, Any]:
    entries = parse_chain(args.chain)
    layers = chain_layers(entries, args.backup_id)
    ctx = cinder_context.get_admin_context()
    db = FakeCinderDB()
    db.install()
    for layer in layers:
        db.add_backup(
            layer.backup_id,
            layer.volume_id,
            container=layer.container or settings.bucket,
            service_metadata=layer.prefix,
            parent_id=layer.parent_id,
        )
    driver = make_driver(ctx)
    if args.size is not None:
        size_bytes = args.size
    else:
        # Read with the driver's own reader, so SSE-C and the bucket work as for the restore.
        base = objects.Backup.get_by_id(ctx, layers[0].backup_id)
        size_bytes = volume_bytes_from_metadata(driver._read_metadata(base))
    if size_bytes <= 0:
        raise HarnessError("cannot tell the volume size (full backup has no objects); use --size")
    size_gib = size_in_gib(size_bytes)
    for layer in layers:
        db.backups[layer.backup_id]["size"] = size_gib
    # The manager sets the requested backup to 'restoring' before calling the driver, and the
    # driver re-reads it before every object: any other status cancels the restore.
    db.backups[args.backup_id]["status"] = c_fields.BackupStatus.RESTORING
    target_volume_id = args.target_volume_id or str(uuid.uuid4())
    # The API names an auto-created target 'restore_backup_<id>'; BackupMetadataAPI then lets
    # the backup's volume_meta rename it.
    target_name = f"restore_backup_{args.backup_id}" if args.volume_is_new else "restore-target"
    db.add_volume(target_volume_id, size_gib, status="restoring-backup", display_name=target_name)
    requested = objects.Backup.get_by_id(ctx, args.backup_id)
    with open_target(args.volume_file, size_bytes, args.volume_is_new) as target:
        driver.restore(requested, target_volume_id, target, args.volume_is_new)
    return {
        "ok": True,
        "backup_id": args.backup_id,
        "layers": [layer.backup_id for layer in layers],
        "size_bytes": size_bytes,
        "volume_is_new": args.volume_is_new,
        "target_volume_id": target_volume_id,
        "volume_updates": db.volume_updates,
    }


def cmd_delete(args: argparse.Namespace, settings: S3Settings) -> dict[str, Any]:
    """Delete one backup's objects with Cinder's delete_backup (newest of a chain first)."""
    ctx = cinder_context.get_admin_context()
    db = FakeCinderDB()
    db.install()
    db.add_backup(
        args.backup_id,
        args.volume_id,
        status=c_fields.BackupStatus.DELETING,
        container=args.container or settings.bucket,
        service_metadata=args.prefix,
    )
    backup = objects.Backup.get_by_id(ctx, args.backup_id)
    driver = make_driver(ctx)
    # Cinder lists everything under the prefix and deletes it object by object. Listing an
    # empty prefix raises TypeError inside Cinder (no "Contents"); delete_backup shrugs it off.
    try:
        deleted = driver.get_container_entries(backup.container, backup.service_metadata)
    except TypeError:
        deleted = []
    driver.delete_backup(backup)
    return {"ok": True, "backup_id": args.backup_id, "deleted": deleted}


def cmd_import_url(args: argparse.Namespace) -> dict[str, Any]:
    """Check a backup_url the way `cinder backup-import` does, as far as it goes without a DB."""
    # BackupManager._is_our_backup: the given service must be a prefix of the driver name.
    if args.backup_service and not DRIVER_NAME.startswith(args.backup_service):
        raise HarnessError(f"backup service {args.backup_service!r} is not {DRIVER_NAME}")
    # API: decode (InvalidInput on bad base64 / JSON), then require id and size.
    record = objects.Backup.decode_record(args.backup_url)
    if not isinstance(record, dict):
        raise HarnessError(f"backup record is a {type(record).__name__}, not an object")
    for key in API_REQUIRED_IMPORT_KEYS:
        if key not in record:
            raise HarnessError(f"backup record is missing {key} (checked by the API)")
    # Manager: take driver_info out (S3 uses the base driver's no-op import_record), then
    # require the rest.
    options = dict(record)
    options.pop("driver_info", {})
    missing = sorted(set(MANAGER_REQUIRED_IMPORT_KEYS) - set(options))
    if missing:
        raise HarnessError(f"backup record is missing {', '.join(missing)} (checked by manager)")
    # The row the API creates, then the manager's update of it with the record: this is where
    # oslo.versionedobjects coerces every value to its field type (UUID, int, datetime, ...),
    # so a wrongly typed field fails here as it would in Cinder.
    ctx = cinder_context.get_admin_context()
    backup = objects.BackupImport(
        context=ctx,
        id=record["id"],
        user_id=HARNESS_USER,
        project_id=HARNESS_PROJECT,
        volume_id=IMPORT_VOLUME_ID,
        status=c_fields.BackupStatus.CREATING,
        deleted_at=None,
        deleted=False,
        metadata={},
    )
    options.update(service=DRIVER_NAME, availability_zone="nova", host=HARNESS_HOST)
    for key in MANAGER_DROPPED_IMPORT_KEYS:
        options.pop(key, None)
    try:
        backup.update(options)
    except (ValueError, TypeError, AttributeError) as err:
        raise HarnessError(f"Cinder cannot apply the backup record: {err}") from None
    backup.status = c_fields.BackupStatus.AVAILABLE
    imported = {
        name: field.to_primitive(backup, name, getattr(backup, name))
        for name, field in backup.fields.items()
        if name != "parent" and backup.obj_attr_is_set(name)
    }
    return {"ok": True, "record": record, "imported": imported}


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cinder_harness.py",
        description="Run Cinder's S3 backup driver (configured from BAKFS_S3_* variables).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    backup = sub.add_parser("backup", help="back up a volume file with Cinder")
    backup.add_argument("--volume-file", required=True)
    backup.add_argument("--volume-id", required=True)
    backup.add_argument("--backup-id", required=True)
    backup.add_argument("--parent-id", help="make an incremental backup on top of this one")
    backup.add_argument("--parent-prefix", help="the parent's object prefix (service_metadata)")
    backup.add_argument("--parent-container", help="the parent's bucket (default: configured)")
    backup.add_argument("--container", help="bucket given at backup-create (default: configured)")
    backup.add_argument("--name", help="display_name")
    backup.add_argument("--description", help="display_description")

    restore = sub.add_parser("restore", help="restore a backup chain with Cinder")
    restore.add_argument("--volume-file", required=True, help="target file")
    restore.add_argument(
        "--chain",
        required=True,
        help='JSON list (or @file) of {"backup_id","volume_id","prefix","parent_id"'
        ',"container"?}, any order',
    )
    restore.add_argument("--backup-id", required=True, help="the backup to restore")
    restore.add_argument(
        "--volume-is-new",
        action="store_true",
        help="restore as into a new volume (Cinder then skips all-zero windows of the full "
        "backup); the target file is recreated as zeros",
    )
    restore.add_argument(
        "--size", type=int, help="volume size in bytes (default: from the full backup)"
    )
    restore.add_argument("--target-volume-id", help="id of the fake target volume row")

    delete = sub.add_parser("delete", help="delete a backup's objects with Cinder")
    delete.add_argument("--backup-id", required=True)
    delete.add_argument("--volume-id", required=True)
    delete.add_argument("--prefix", required=True, help="the backup's service_metadata")
    delete.add_argument("--container", help="the backup's bucket (default: configured)")

    import_url = sub.add_parser("import-url", help="check a backup_url as backup-import would")
    import_url.add_argument("--backup-url", required=True)
    import_url.add_argument(
        "--backup-service", default=DRIVER_NAME, help="backup_service given to backup-import"
    )
    return parser


def run(argv: Sequence[str]) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    isolate_environment()
    if args.command == "import-url":
        configure_cinder(None)
        return cmd_import_url(args)
    settings = S3Settings.from_environ(dict(os.environ))
    configure_cinder(settings)
    if args.command == "backup":
        return cmd_backup(args, settings)
    if args.command == "delete":
        return cmd_delete(args, settings)
    return cmd_restore(args, settings)


def main(argv: Sequence[str] | None = None) -> int:
    debug = os.environ.get("BAKFS_HARNESS_DEBUG", "") not in ("", "0")
    # force: importing Cinder already attached a bare handler to the root logger.
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # botocore's DEBUG output includes request headers, i.e. the SSE-C key.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.INFO if debug else logging.WARNING)
    try:
        result = run(sys.argv[1:] if argv is None else argv)
    except HarnessError as err:
        print(f"cinder_harness: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if debug:
            log.exception("failed")
        print(f"cinder_harness: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

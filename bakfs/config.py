"""bakfs's configuration: one frozen, validated object built from defaults, a TOML file and
the environment.

Every option of Cinder's S3 and TSM backup drivers has a counterpart here with the same
meaning (each field's metadata names the Cinder option). Precedence, lowest first: built-in
default < TOML file < environment variable `BAKFS_<SECTION>_<OPTION>`. The file is the one
given with `--config`, else `$BAKFS_CONFIG`, else the first that exists of the platform config
dir's `bakfs.toml` and `/etc/bakfs/bakfs.toml`. Secrets are `Secret` values that never print.

This module knows nothing of argparse, boto3 or trio.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs

from bakfs.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
MAX_VOLUME_SIZE = 1 << 62  # far beyond any disk, and below what a file size (signed 64 bits) holds

ENV_PREFIX = "BAKFS_"
CONFIG_ENV = "BAKFS_CONFIG"
SYSTEM_CONFIG = Path("/etc/bakfs/bakfs.toml")


class Secret:
    """A secret string (key, password) that shows as `****` wherever it is printed or logged."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call only where it is handed to the library that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> typing.NoReturn:
        raise TypeError("a Secret is not pickled, so it never lands in a file by accident")


RetryMode = Literal["legacy", "standard", "adaptive"]
Compression = Literal["none", "zlib", "bz2", "zstd"]
SseAlgorithm = Literal["AES256"]


def _opt(default: Any, help: str, cinder: str | None = None, why: str | None = None,
         size: bool = False) -> Any:
    """A dataclass field carrying its documentation: `help`, the Cinder option it mirrors and,
    where bakfs's default differs from Cinder's, `why`."""
    return dataclasses.field(
        default=default,
        metadata={"help": help, "cinder": cinder, "why": why, "size": size},
    )


@dataclasses.dataclass(frozen=True)
class S3Options:
    """`[s3]`: the object store and the chunked format written into it (Cinder's
    `backup_s3_*` options). The format options also govern the embedded local store."""

    endpoint_url: str | None = _opt(
        None, "URL of the S3 server; unset means the embedded local store is used",
        "backup_s3_endpoint_url")
    bucket: str = _opt("volumebackups", "bucket holding the backups (created if missing)",
                       "backup_s3_store_bucket")
    access_key: Secret | None = _opt(None, "S3 access key", "backup_s3_store_access_key")
    secret_key: Secret | None = _opt(None, "S3 secret key", "backup_s3_store_secret_key")
    sse_customer_key: Secret | None = _opt(
        None, "SSE-C key (32 bytes for AES256); SSE-C is on only when the algorithm is set too",
        "backup_s3_sse_customer_key")
    sse_customer_algorithm: SseAlgorithm | None = _opt(
        None, "SSE-C algorithm; SSE-C is on only when the key is set too",
        "backup_s3_sse_customer_algorithm")
    object_size: int = _opt(
        4 * MiB, "largest uncompressed size of one data object (a multiple of block_size)",
        "backup_s3_object_size",
        why="Cinder's 50 MiB means a 4 KiB random read fetches and decompresses up to 50 MiB; "
            "4 MiB keeps random reads cheap, matches dd bs=4M, and Cinder restores it as is",
        size=True)
    block_size: int = _opt(32 * KiB, "granularity of change tracking for incrementals",
                           "backup_s3_block_size", size=True)
    md5_validation: bool = _opt(True, "send Content-MD5 so the server verifies every upload",
                                "backup_s3_md5_validation")
    http_proxy: str = _opt("", "proxy for http:// endpoints", "backup_s3_http_proxy")
    https_proxy: str = _opt("", "proxy for https:// endpoints", "backup_s3_https_proxy")
    timeout: float = _opt(60.0, "connect and read timeout of one request, in seconds",
                          "backup_s3_timeout")
    max_pool_connections: int = _opt(
        10, "connections to the store kept open; also the number of parallel transfers",
        "backup_s3_max_pool_connections")
    retry_max_attempts: int = _opt(4, "attempts per request before giving up",
                                   "backup_s3_retry_max_attempts")
    retry_mode: RetryMode = _opt(
        "standard", "botocore retry mode", "backup_s3_retry_mode",
        why="'standard' backs off exponentially with jitter and retries more transient errors "
            "(timeouts, 5xx, throttling) than Cinder's 'legacy'")
    verify_ssl: bool = _opt(True, "verify the server's TLS certificate", "backup_s3_verify_ssl")
    ca_cert_file: str | None = _opt(None, "CA bundle to verify the server with",
                                    "backup_s3_ca_cert_file")
    enable_progress_timer: bool = _opt(
        True, "report progress of long operations (a bar on a terminal, periodic log lines)",
        "backup_s3_enable_progress_timer")
    compression: Compression = _opt(
        "zstd", "codec for new data objects: none, zlib, bz2 or zstd",
        "backup_compression_algorithm",
        why="zstd compresses about as well as zlib at several times the speed; Cinder 17+ "
            "reads it. Cinder's default is zlib")
    availability_zone: str = _opt("nova", "AZ written into new backups' object prefix",
                                  "storage_availability_zone")
    create_bucket: bool = _opt(True, "create the bucket when it does not exist",
                               "backup_create_containers")

    @property
    def sse_enabled(self) -> bool:
        """SSE-C applies only when both the key and the algorithm are set (as in Cinder)."""
        return self.sse_customer_key is not None and self.sse_customer_algorithm is not None


@dataclasses.dataclass(frozen=True)
class LocalOptions:
    """`[local]`: the embedded default store, used when no S3 endpoint is configured."""

    path: str = _opt(
        str(Path(platformdirs.user_data_dir("bakfs")) / "store"),
        "directory of the embedded store; holds `<bucket>/<object key>` files")


@dataclasses.dataclass(frozen=True)
class TsmOptions:
    """`[tsm]`: IBM Spectrum Protect through its `dsmc` client (Cinder's `backup_tsm_*`)."""

    volume_prefix: str = _opt("backup", "prefix of the link name backed up for each volume",
                              "backup_tsm_volume_prefix")
    password: Secret | None = _opt(
        None, "TSM password; unset means the client's stored password (passwordaccess generate)",
        "backup_tsm_password",
        why="Cinder defaults to the literal 'password'; bakfs never invents one")
    compression: bool = _opt(True, "ask dsmc to compress", "backup_tsm_compression")
    dsmc_path: str = _opt("dsmc", "the dsmc binary (a name on PATH or a path)")
    timeout: float = _opt(0.0, "seconds one dsmc run may take before it is stopped; 0: no limit")
    staging_path: str = _opt(str(Path(platformdirs.user_cache_dir("bakfs")) / "tsm-staging"),
                             "directory where TSM backups are restored to be read")
    staging_max_size: int = _opt(16 * GiB, "upper bound of the staging area; finished stagings "
                                           "not in use are evicted, oldest first", size=True)
    incoming_volumes: str = _opt("", "volumes (comma-separated ids, or *) whose backups written "
                                     "into the mount's incoming/ go to TSM instead of S3")

    def takes_incoming(self, volume_id: str) -> bool:
        """Whether a backup of this volume written into incoming/ goes to TSM."""
        wanted = {v.strip() for v in self.incoming_volumes.split(",") if v.strip()}
        return "*" in wanted or volume_id in wanted


@dataclasses.dataclass(frozen=True)
class CacheOptions:
    """`[cache]`: verified, decompressed objects kept for reads (a cache: safe to delete)."""

    path: str = _opt(str(Path(platformdirs.user_cache_dir("bakfs")) / "chunks"),
                     "directory of the on-disk chunk cache")
    max_size: int = _opt(2 * GiB, "upper bound of the on-disk cache; least recently used "
                                  "objects are evicted beyond it", size=True)
    memory_size: int = _opt(64 * MiB, "upper bound of the in-memory layer of the cache",
                            size=True)
    readahead_max: int = _opt(64 * MiB, "largest read-ahead window of a sequential reader",
                              size=True)
    keep_sequential: bool = _opt(
        False, "also keep on disk the objects read by sequential streams (dd, cp, restore); "
               "off: a full read of a volume does not evict the objects random readers use")


@dataclasses.dataclass(frozen=True)
class IndexOptions:
    """`[index]`: the LMDB catalog and chunk index (a cache of the store: rebuilt if lost)."""

    path: str = _opt(str(Path(platformdirs.user_cache_dir("bakfs")) / "index"),
                     "directory of the LMDB chunk index")
    refresh_interval: float = _opt(60.0, "seconds between looks for backups made elsewhere")
    max_volume_size: int = _opt(
        64 * TiB, "largest volume a backup may claim: a backup whose `_metadata` claims more "
                  "is listed as unreadable (its objects may be up to twice the larger of "
                  "s3.object_size and Cinder's 50 MiB)", size=True)


@dataclasses.dataclass(frozen=True)
class MountOptions:
    """`[mount]`: who may read the backups of a mount. The kernel checks these permissions
    (default_permissions); `-o allow_other` is what lets users other than the one who mounted
    in at all."""

    owner: str = _opt("", "owner of every file and directory of the mount (a user name or "
                          "uid); empty: the user who mounts")
    group: str = _opt("", "their group (a name or gid); empty: `disk` when root mounts "
                          "(who may read disks may read their backups), else the user's "
                          "primary group")
    file_mode: str = _opt("0440", "mode of backup files and .status (octal); directories get "
                                  "x where files get r, and only the owner writes into "
                                  "incoming/")

    @property
    def file_mode_bits(self) -> int:
        return int(self.file_mode, 8)


SECTIONS: dict[str, type] = {"s3": S3Options, "local": LocalOptions, "tsm": TsmOptions,
                             "cache": CacheOptions, "index": IndexOptions,
                             "mount": MountOptions}


@dataclasses.dataclass(frozen=True)
class Config:
    """The effective configuration. `sources` maps `section.option` to where its value came
    from; `warnings` are messages to log once at start."""

    s3: S3Options = dataclasses.field(default_factory=S3Options)
    local: LocalOptions = dataclasses.field(default_factory=LocalOptions)
    tsm: TsmOptions = dataclasses.field(default_factory=TsmOptions)
    cache: CacheOptions = dataclasses.field(default_factory=CacheOptions)
    index: IndexOptions = dataclasses.field(default_factory=IndexOptions)
    mount: MountOptions = dataclasses.field(default_factory=MountOptions)
    path: Path | None = None
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def uses_s3(self) -> bool:
        return self.s3.endpoint_url is not None


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """One option as documented: for `config show`, `--help` texts and docs."""

    section: str
    name: str
    type_name: str
    default: Any
    help: str
    cinder: str | None
    why: str | None
    choices: tuple[str, ...]
    secret: bool
    size: bool

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section}_{self.name}".upper()


def options() -> list[OptionInfo]:
    """Every option of every section, in declaration order."""
    infos = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            base, choices, _optional = _unwrap(hints[f.name])
            infos.append(OptionInfo(
                section=section, name=f.name, type_name=base.__name__, default=f.default,
                help=f.metadata["help"], cinder=f.metadata["cinder"], why=f.metadata["why"],
                choices=choices, secret=base is Secret, size=f.metadata["size"]))
    return infos


def _unwrap(hint: Any) -> tuple[type, tuple[str, ...], bool]:
    """Split an annotation into (base type, allowed values of a Literal, accepts None)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is Literal:
        return str, tuple(typing.get_args(hint)), optional
    return hint, (), optional


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_size(text: str) -> int:
    """'4194304', '4M', '4MiB' and '4 mib' all mean 4 MiB (binary units, as Cinder's sizes)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(text)
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * _SIZE_UNITS[unit]


def _convert(info: OptionInfo, optional: bool, raw: Any, source: str) -> Any:
    """Turn a raw file or environment value into the option's type, or fail naming both."""

    def bad(expected: str) -> ConfigError:
        shown = "****" if info.secret else repr(raw)
        return ConfigError(f"{info.key} = {shown} (from {source}): expected {expected}")

    if raw is None or (optional and isinstance(raw, str) and raw == "" and not info.secret):
        if optional:
            return None
        raise bad(info.type_name)
    if info.secret:
        if not isinstance(raw, str) or raw == "":
            raise bad("a non-empty string")
        return Secret(raw)
    if info.choices:
        value = str(raw)
        folded = {c.lower(): c for c in info.choices}
        if value.lower() not in folded:
            raise bad("one of " + ", ".join(info.choices))
        return folded[value.lower()]
    if info.type_name == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise bad("true or false")
    if info.type_name == "int":
        if isinstance(raw, bool):
            raise bad("an integer")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str):
            try:
                return parse_size(raw) if info.size else int(raw)
            except ValueError:
                pass
        raise bad("a size such as 4194304 or 4MiB" if info.size else "an integer")
    if info.type_name == "float":
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if not isinstance(raw, str):
        raise bad("a string")
    return raw


def default_config_path() -> Path | None:
    """The first existing file of the platform config dir's bakfs.toml and /etc/bakfs."""
    for candidate in (Path(platformdirs.user_config_dir("bakfs")) / "bakfs.toml", SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load(path: str | os.PathLike[str] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Build the effective configuration; raise ConfigError naming the bad option."""
    env = os.environ if environ is None else environ
    file_path: Path | None
    if path is not None:
        file_path = Path(path)
    elif env.get(CONFIG_ENV):
        file_path = Path(env[CONFIG_ENV])
    else:
        file_path = default_config_path()

    file_data: dict[str, Any] = {}
    if file_path is not None:
        try:
            file_data = tomllib.loads(file_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {file_path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {file_path}: "
                              f"{exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {file_path} is not valid TOML: {exc}") from None

    infos = options()
    known_env = {i.env for i in infos} | {CONFIG_ENV}
    warnings: list[str] = []
    _check_file_keys(file_data, file_path)

    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    sources: dict[str, str] = {}
    secrets_in_file = False
    # once per section: each call evaluates every annotation of the class again (47 calls
    # took 4-5 ms of every command's start)
    hints = {section: typing.get_type_hints(cls) for section, cls in SECTIONS.items()}
    for info in infos:
        optional = _unwrap(hints[info.section][info.name])[2]
        section_data = file_data.get(info.section, {})
        if info.env in env:
            source = f"env {info.env}"
            value = _convert(info, optional, env[info.env], source)
        elif info.name in section_data:
            source = f"file {file_path}"
            value = _convert(info, optional, section_data[info.name], source)
            secrets_in_file |= info.secret and value is not None
        else:
            continue
        values[info.section][info.name] = value
        sources[info.key] = source

    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known_env:
            warnings.append(f"environment variable {name} is not a bakfs option; ignored")
    if file_path is not None and secrets_in_file:
        mode = file_path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(f"{file_path} holds secrets but is readable by others "
                            f"(mode {stat.filemode(mode)}); chmod 600 it")

    s3 = S3Options(**values["s3"])
    config = Config(
        s3=_validate_s3(s3, warnings),
        local=LocalOptions(**values["local"]),
        tsm=TsmOptions(**values["tsm"]),
        cache=_validate_cache(CacheOptions(**values["cache"])),
        index=_validate_index(IndexOptions(**values["index"])),
        mount=_validate_mount(MountOptions(**values["mount"])),
        path=file_path,
        sources=sources,
        warnings=tuple(warnings),
    )
    return config


def _check_file_keys(data: Mapping[str, Any], path: Path | None) -> None:
    """Unknown sections or options in the file are errors: a typo must not pass silently."""
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}]; "
                              f"known sections: {', '.join(SECTIONS)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}])")
        names = [f.name for f in dataclasses.fields(SECTIONS[section])]
        for key in body:
            if key not in names:
                raise ConfigError(f"{path}: unknown option {section}.{key}; "
                                  f"options of [{section}]: {', '.join(names)}")


def _validate_s3(s3: S3Options, warnings: list[str]) -> S3Options:
    """Cross-field rules, each failing with a message that names the options involved."""
    if s3.block_size <= 0:
        raise ConfigError(f"s3.block_size must be positive, not {s3.block_size}")
    if s3.object_size <= 0:
        raise ConfigError(f"s3.object_size must be positive, not {s3.object_size}")
    if s3.object_size % s3.block_size:
        raise ConfigError(
            f"s3.object_size ({s3.object_size}) must be a multiple of s3.block_size "
            f"({s3.block_size}), as Cinder requires")
    if s3.timeout <= 0:
        raise ConfigError(f"s3.timeout must be positive, not {s3.timeout}")
    if s3.max_pool_connections < 1:
        raise ConfigError(f"s3.max_pool_connections must be at least 1, "
                          f"not {s3.max_pool_connections}")
    if s3.retry_max_attempts < 0:
        raise ConfigError(f"s3.retry_max_attempts must be 0 or more, not {s3.retry_max_attempts}")
    if not s3.bucket or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}", s3.bucket):
        raise ConfigError(f"s3.bucket {s3.bucket!r} is not a valid bucket name "
                          "(letters, digits, '.', '_', '-'; 2 to 255 characters)")
    if s3.endpoint_url is not None:
        if not re.match(r"^https?://[^/\s]+", s3.endpoint_url):
            raise ConfigError(f"s3.endpoint_url {s3.endpoint_url!r} must start with "
                              "http:// or https:// and name a host")
        missing = [n for n in ("access_key", "secret_key") if getattr(s3, n) is None]
        if missing:
            raise ConfigError(
                "s3.endpoint_url is set but " + " and ".join(f"s3.{n}" for n in missing)
                + " is missing (set it in the file or in "
                + " / ".join(f"BAKFS_S3_{n.upper()}" for n in missing) + ")")
    if s3.ca_cert_file is not None and not Path(s3.ca_cert_file).is_file():
        raise ConfigError(f"s3.ca_cert_file {s3.ca_cert_file} does not exist")
    if (s3.sse_customer_key is None) != (s3.sse_customer_algorithm is None):
        warnings.append("both s3.sse_customer_algorithm and s3.sse_customer_key must be set to "
                        "enable SSE-C; SSE-C is disabled")
        s3 = dataclasses.replace(s3, sse_customer_key=None, sse_customer_algorithm=None)
    if s3.sse_customer_key is not None and len(s3.sse_customer_key.reveal().encode()) != 32:
        raise ConfigError("s3.sse_customer_key must be exactly 32 bytes for AES256 "
                          f"(it has {len(s3.sse_customer_key.reveal().encode())})")
    return s3


def _validate_cache(cache: CacheOptions) -> CacheOptions:
    for name in ("max_size", "memory_size", "readahead_max"):
        if getattr(cache, name) < 0:
            raise ConfigError(f"cache.{name} must not be negative")
    return cache


def _validate_mount(mount: MountOptions) -> MountOptions:
    if not re.fullmatch(r"0?[0-7]{3}", mount.file_mode):
        raise ConfigError(f"mount.file_mode {mount.file_mode!r} must be an octal mode such as "
                          "0440")
    for name in ("owner", "group"):
        value = getattr(mount, name)
        if value and not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?", value):
            raise ConfigError(f"mount.{name} {value!r} is neither a name nor a number")
    return mount


def _validate_index(index: IndexOptions) -> IndexOptions:
    if index.refresh_interval <= 0:
        raise ConfigError(f"index.refresh_interval must be positive, not "
                          f"{index.refresh_interval}")
    if not 0 < index.max_volume_size <= MAX_VOLUME_SIZE:
        raise ConfigError(f"index.max_volume_size must be between 1 and {MAX_VOLUME_SIZE}, "
                          f"not {index.max_volume_size}")
    return index


def describe(config: Config) -> list[tuple[OptionInfo, Any, str]]:
    """(option, effective value, source) for every option; secrets stay `Secret`."""
    rows = []
    for info in options():
        value = getattr(getattr(config, info.section), info.name)
        rows.append((info, value, config.sources.get(info.key, "default")))
    return rows

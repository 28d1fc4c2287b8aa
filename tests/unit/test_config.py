import os
from pathlib import Path

import pytest

from bakfs import config
from bakfs.config import MiB, Secret
from bakfs.errors import ConfigError, MountError
from bakfs.mount.permissions import resolve


def test_defaults_match_cinders_where_bakfs_does_not_say_why_it_differs() -> None:
    cinder_defaults = {
        "bucket": "volumebackups", "object_size": 52428800, "block_size": 32768,
        "md5_validation": True, "http_proxy": "", "https_proxy": "", "timeout": 60.0,
        "max_pool_connections": 10, "retry_max_attempts": 4, "retry_mode": "legacy",
        "verify_ssl": True, "ca_cert_file": None, "enable_progress_timer": True,
        "compression": "zlib", "endpoint_url": None, "access_key": None, "secret_key": None,
        "sse_customer_key": None, "sse_customer_algorithm": None, "availability_zone": "nova",
        "create_bucket": True,
    }
    infos = {i.name: i for i in config.options() if i.section == "s3"}
    assert set(infos) == set(cinder_defaults)
    for name, cinder_default in cinder_defaults.items():
        info = infos[name]
        assert info.cinder is not None, name
        if info.default != cinder_default:
            assert info.why, f"s3.{name} differs from Cinder without saying why"
    assert config.load(environ={}).s3.object_size == 4 * MiB


def test_file_then_environment_with_sources(tmp_path: Path) -> None:
    path = tmp_path / "bakfs.toml"
    path.write_text('[s3]\nbucket = "frombucket"\nobject_size = "8MiB"\ncompression = "ZLIB"\n'
                    '[tsm]\ncompression = false\n')
    cfg = config.load(path, environ={"BAKFS_S3_BUCKET": "envbucket",
                                     "BAKFS_S3_MD5_VALIDATION": "no"})
    assert cfg.s3.bucket == "envbucket"
    assert cfg.s3.object_size == 8 * MiB
    assert cfg.s3.compression == "zlib"
    assert cfg.s3.md5_validation is False
    assert cfg.tsm.compression is False
    assert cfg.sources["s3.bucket"] == "env BAKFS_S3_BUCKET"
    assert cfg.sources["s3.object_size"] == f"file {path}"
    assert "s3.block_size" not in cfg.sources


def test_config_file_found_through_bakfs_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[s3]\nbucket = "viaenv"\n')
    assert config.load(environ={"BAKFS_CONFIG": str(path)}).s3.bucket == "viaenv"
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(environ={"BAKFS_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(("env", "message"), [
    ({"BAKFS_S3_OBJECT_SIZE": "100000"},
     r"s3.object_size \(100000\) must be a multiple of s3.block_size \(32768\)"),
    ({"BAKFS_S3_RETRY_MODE": "sometimes"}, "one of legacy, standard, adaptive"),
    ({"BAKFS_S3_COMPRESSION": "lz4"}, "one of none, zlib, bz2, zstd"),
    ({"BAKFS_S3_MD5_VALIDATION": "maybe"}, "md5_validation.*true or false"),
    ({"BAKFS_S3_TIMEOUT": "soon"}, "s3.timeout.*a number"),
    ({"BAKFS_S3_MAX_POOL_CONNECTIONS": "0"}, "at least 1"),
    ({"BAKFS_S3_ENDPOINT_URL": "127.0.0.1:7480", "BAKFS_S3_ACCESS_KEY": "a",
      "BAKFS_S3_SECRET_KEY": "b"}, "http:// or https://"),
    ({"BAKFS_S3_ENDPOINT_URL": "http://h"}, "s3.access_key and s3.secret_key is missing"),
    ({"BAKFS_S3_BUCKET": "no/slash"}, "not a valid bucket name"),
])
def test_invalid_values_fail_naming_the_option_and_accepted_values(
        env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(environ=env)


def test_unknown_file_options_and_sections_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[s3]\nbukket = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown option s3.bukket"):
        config.load(path, environ={})
    path.write_text('[bogus]\nsize = 1\n')
    with pytest.raises(ConfigError, match=r"unknown section \[bogus\]"):
        config.load(path, environ={})
    path.write_text('[s3\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(path, environ={})


def test_sse_needs_both_options_else_warns_and_is_off() -> None:
    cfg = config.load(environ={"BAKFS_S3_SSE_CUSTOMER_KEY": "k" * 32})
    assert not cfg.s3.sse_enabled and cfg.s3.sse_customer_key is None
    assert any("SSE-C is disabled" in w for w in cfg.warnings)
    cfg = config.load(environ={"BAKFS_S3_SSE_CUSTOMER_KEY": "k" * 32,
                               "BAKFS_S3_SSE_CUSTOMER_ALGORITHM": "aes256"})
    assert cfg.s3.sse_enabled and cfg.s3.sse_customer_algorithm == "AES256"
    with pytest.raises(ConfigError, match="exactly 32 bytes"):
        config.load(environ={"BAKFS_S3_SSE_CUSTOMER_KEY": "short",
                             "BAKFS_S3_SSE_CUSTOMER_ALGORITHM": "AES256"})


def test_secrets_never_print() -> None:
    secret = "very-secret-value-123"
    cfg = config.load(environ={"BAKFS_S3_SECRET_KEY": secret, "BAKFS_S3_ACCESS_KEY": secret,
                               "BAKFS_TSM_PASSWORD": secret})
    assert isinstance(cfg.s3.secret_key, Secret)
    assert cfg.s3.secret_key.reveal() == secret
    for text in (repr(cfg), str(cfg), f"{cfg.s3}", repr(cfg.tsm), str(cfg.s3.secret_key)):
        assert secret not in text
    with pytest.raises(ConfigError) as info:
        config.load(environ={"BAKFS_S3_SSE_CUSTOMER_KEY": secret,
                             "BAKFS_S3_SSE_CUSTOMER_ALGORITHM": "AES256"})
    assert secret not in str(info.value)


def test_world_readable_file_with_secrets_warns(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[s3]\nsecret_key = "abcdefgh"\n')
    os.chmod(path, 0o644)
    assert any("chmod 600" in w for w in config.load(path, environ={}).warnings)
    os.chmod(path, 0o600)
    assert not config.load(path, environ={}).warnings


def test_unknown_bakfs_variables_warn() -> None:
    cfg = config.load(environ={"BAKFS_S3_BUCKIT": "x"})
    assert any("BAKFS_S3_BUCKIT" in w for w in cfg.warnings)


@pytest.mark.parametrize(("text", "value"), [
    ("4194304", 4 * MiB), ("4M", 4 * MiB), ("4MiB", 4 * MiB), ("32 kib", 32768), ("1G", 1 << 30)])
def test_sizes(text: str, value: int) -> None:
    assert config.parse_size(text) == value


def test_docs_list_every_option_with_its_environment_variable() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for info in config.options():
        assert f"| `{info.name}` | `{info.env}` |" in doc, info.key
        if info.cinder:
            assert f"`{info.cinder}`" in doc


def test_mount_permissions_are_checked_and_resolved() -> None:
    cfg = config.load(environ={"BAKFS_MOUNT_FILE_MODE": "0640", "BAKFS_MOUNT_OWNER": "0"})
    permissions = resolve(cfg.mount)
    assert permissions.file_mode == 0o640 and permissions.dir_mode == 0o550
    assert permissions.uid == 0
    for name, value in (("FILE_MODE", "999"), ("FILE_MODE", "rw-r"), ("GROUP", "a b")):
        with pytest.raises(ConfigError, match="mount"):
            config.load(environ={f"BAKFS_MOUNT_{name}": value})
    with pytest.raises(MountError, match="no-such-user"):
        resolve(config.load(environ={"BAKFS_MOUNT_OWNER": "no-such-user"}).mount)

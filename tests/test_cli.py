"""The command line as a user runs it: a real process, real exit codes, real output."""

import json
import os
import subprocess
import sys
from pathlib import Path

from bakfs.cinder.record import decode_backup_url
from tests.conftest import S3Server


def bakfs(*args: str, env: dict[str, str] | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "bakfs", *args], capture_output=True,
                          text=True, env={**clean, **(env or {})}, timeout=timeout)


def test_help_explains_every_command() -> None:
    result = bakfs("--help")
    assert result.returncode == 0
    for word in ("config", "demo", "export-record", "BAKFS_<SECTION>_<OPTION>"):
        assert word in result.stdout
    assert bakfs("demo", "--help").returncode == 0


def test_config_show_masks_secrets_and_names_sources(tmp_path: Path) -> None:
    secret = "sekret-value-987654321"
    path = tmp_path / "bakfs.toml"
    path.write_text('[s3]\nbucket = "filebucket"\n')
    path.chmod(0o600)
    env = {"BAKFS_CONFIG": str(path), "BAKFS_S3_SECRET_KEY": secret,
           "BAKFS_S3_ACCESS_KEY": "access", "BAKFS_S3_ENDPOINT_URL": "http://127.0.0.1:9"}
    result = bakfs("config", "show", env=env)
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    assert 'secret_key = "****"' in result.stdout
    assert "bucket = \"filebucket\"" in result.stdout and f"file {path}" in result.stdout
    assert "env BAKFS_S3_SECRET_KEY" in result.stdout
    doc = json.loads(bakfs("config", "show", "--json", env=env).stdout)
    assert doc["options"]["s3.secret_key"] == {
        "value": "****", "source": "env BAKFS_S3_SECRET_KEY", "env": "BAKFS_S3_SECRET_KEY"}
    assert doc["options"]["s3.block_size"]["source"] == "default"


def test_config_file_may_follow_the_command(tmp_path: Path) -> None:
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text('[s3]\nbucket = "from-first"\n')
    second.write_text('[s3]\nbucket = "from-second"\n')
    for args, expected in (
            (("config", "show", "--json", "--config", str(first)), first),
            (("--config", str(first), "config", "show", "--json"), first),
            (("--config", str(first), "config", "show", "--json", "--config", str(second)),
             second)):  # given twice, the one after the command wins
        result = bakfs(*args)
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        assert shown["file"] == str(expected)
        assert shown["options"]["s3.bucket"]["value"] == f"from-{expected.stem}"


def test_invalid_configuration_is_one_clear_line_and_exit_2() -> None:
    result = bakfs("config", "show", env={"BAKFS_S3_OBJECT_SIZE": "1000"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "s3.object_size (1000) must be a multiple of s3.block_size (32768)" in result.stderr


def test_config_check_reports_an_unreachable_store(tmp_path: Path) -> None:
    env = {"BAKFS_S3_ENDPOINT_URL": "http://127.0.0.1:9", "BAKFS_S3_ACCESS_KEY": "a",
           "BAKFS_S3_SECRET_KEY": "b", "BAKFS_S3_RETRY_MAX_ATTEMPTS": "1",
           "BAKFS_S3_TIMEOUT": "2"}
    result = bakfs("config", "check", env=env)
    assert result.returncode == 1
    assert "cannot reach the store" in result.stderr and "Traceback" not in result.stderr


def test_demo_round_trips_on_a_fresh_local_store(tmp_path: Path) -> None:
    env = {"BAKFS_LOCAL_PATH": str(tmp_path / "store"), "BAKFS_CACHE_PATH": str(tmp_path / "c"),
           "BAKFS_INDEX_PATH": str(tmp_path / "i")}
    result = bakfs("demo", "--size", "8MiB", env=env)
    assert result.returncode == 0, result.stderr
    assert "demo OK" in result.stdout and "ls -l mnt/" in result.stdout
    assert result.stdout.count(" matches day") == 2
    assert "full then incremental" in result.stdout
    # the demo cleans up after itself unless asked to keep its backups
    assert not list((tmp_path / "store" / "volumebackups").rglob("*_metadata"))


def test_demo_and_export_record_against_radosgw(rgw: S3Server, bucket_name: str,
                                                tmp_path: Path) -> None:
    env = {**rgw.env(bucket_name), "BAKFS_CACHE_PATH": str(tmp_path / "c"),
           "BAKFS_INDEX_PATH": str(tmp_path / "i")}
    result = bakfs("demo", "--size", "4MiB", "--keep", env=env)
    assert result.returncode == 0, result.stderr
    assert "S3 bucket" in result.stdout and "demo OK" in result.stdout
    workdir = Path(result.stdout.split("work dir = ")[1].split()[0])
    assert not workdir.exists()  # --keep keeps the backups, not the images
    check = bakfs("config", "check", env=env)
    assert check.returncode == 0 and "holds 2 complete backups" in check.stdout
    backup_id = result.stdout.split("latest -> ")[1].split("Z-", 1)[1].split()[0]
    export = bakfs("export-record", backup_id, env=env)
    assert export.returncode == 0, export.stderr
    assert "import the parent" in export.stderr
    command = export.stdout.split()
    assert command[:3] == ["cinder", "backup-import", "cinder.backup.drivers.s3.S3BackupDriver"]
    fields = decode_backup_url(command[3])
    assert fields["id"] == backup_id and fields["container"] == bucket_name
    assert fields["service_metadata"].endswith(f"_backup_{backup_id}")
    assert fields["parent_id"] and fields["size"] == 1
    missing = bakfs("export-record", "no-such-backup", env=env)
    assert missing.returncode == 1 and "no complete backup no-such-backup" in missing.stderr

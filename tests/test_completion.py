"""Bash completion as a shell runs it: the script from `bakfs completion` sourced in real
bash, COMP_WORDS set as readline would, the replies read back; ids come from the index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def bakfs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "bakfs"), *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("completion")


@pytest.fixture(scope="module")
def env(store_dir: Path) -> dict[str, str]:
    """A local store with backups of two volumes, and an index that knows them."""
    tmp_path = store_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    env.update({"BAKFS_LOCAL_PATH": str(tmp_path / "store"),
                "BAKFS_CACHE_PATH": str(tmp_path / "cache"),
                "BAKFS_INDEX_PATH": str(tmp_path / "index"),
                "PATH": f"{BIN}:{env['PATH']}"})
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(100_000))
    for volume in ("vol-alpha", "vol-beta", "vol-beta"):
        assert bakfs(env, "backup", str(image), "--volume", volume).returncode == 0
    assert bakfs(env, "index", "refresh").returncode == 0
    return env


def complete(env: dict[str, str], line: str, cwd: Path, script: str = "") -> list[str]:
    """COMPREPLY for the command line `line` with the cursor at its end."""
    words = line.split(" ")
    program = f"""
{script or 'source <(bakfs completion)'}
COMP_WORDS=({' '.join(repr(w) for w in words)})
COMP_CWORD={len(words) - 1}
_bakfs
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(["bash", "-c", program], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.splitlines() if w]


def test_commands_options_and_ids(env: dict[str, str], tmp_path: Path) -> None:
    ids = sorted(line.split()[0] for line in bakfs(env, "ls").stdout.splitlines()
                 if line.startswith("  ") and "BACKUP" not in line)
    assert len(ids) == 3
    assert complete(env, "bakfs res", tmp_path) == ["restore"]
    assert complete(env, "bakfs ver", tmp_path) == ["verify", "verify-device"]
    assert "attach" in complete(env, "bakfs ", tmp_path)
    assert complete(env, "bakfs restore --d", tmp_path) == ["--delta", "--dry-run"]
    assert complete(env, "bakfs --v", tmp_path) == ["--verbose", "--version"]
    assert complete(env, "bakfs restore ", tmp_path) == ids
    assert complete(env, f"bakfs verify-device {ids[0][:4]}", tmp_path) == [
        i for i in ids if i.startswith(ids[0][:4])]
    assert complete(env, "bakfs ls ", tmp_path) == ["vol-alpha", "vol-beta"]
    assert complete(env, "bakfs backup disk.img --volume vol-b", tmp_path) == ["vol-beta"]
    assert complete(env, "bakfs tsm ", tmp_path) == ["backup", "ls", "restore", "delete"]
    assert complete(env, "bakfs index re", tmp_path) == ["refresh", "rebuild"]
    # file and directory arguments: bash's own completion
    (tmp_path / "disk.img").write_bytes(b"")
    assert complete(env, f"bakfs restore {ids[0]} dis", tmp_path) == ["disk.img"]
    (tmp_path / "mnt").mkdir()
    assert complete(env, "bakfs attach x --mount mn", tmp_path) == ["mnt"]
    assert complete(env, "bakfs nosuchcommand ", tmp_path) == []


def test_ids_follow_the_config_on_the_command_line(env: dict[str, str], store_dir: Path,
                                                   tmp_path: Path) -> None:
    env = {k: v for k, v in env.items() if k != "BAKFS_INDEX_PATH"}
    full, empty = tmp_path / "full.toml", tmp_path / "empty.toml"
    full.write_text(f'[index]\npath = "{store_dir / "index"}"\n')
    empty.write_text(f'[index]\npath = "{tmp_path / "empty-index"}"\n')
    assert len(complete(env, f"bakfs --config {full} restore ", tmp_path)) == 3
    assert complete(env, f"bakfs --config {empty} restore ", tmp_path) == []
    assert not (tmp_path / "empty-index").exists()  # a TAB creates no index


def test_the_shipped_script_is_current_and_loads_through_bash_completion(
        env: dict[str, str], tmp_path: Path) -> None:
    shipped = ROOT / "dist" / "bash-completion" / "bakfs"
    assert shipped.read_text() == bakfs(env, "completion").stdout
    assert bakfs(env, "completion", "bash").stdout == shipped.read_text()
    assert bakfs(env, "completion", "zsh").returncode == 2
    # installed where bash-completion looks for it, loaded on first use
    user_dir = tmp_path / "bash-completion"
    (user_dir / "completions").mkdir(parents=True)
    (user_dir / "completions" / "bakfs").write_text(shipped.read_text())
    loader = ("source /usr/share/bash-completion/bash_completion\n"
              "__load_completion bakfs\ncomplete -p bakfs >&2")
    env = {**env, "BASH_COMPLETION_USER_DIR": str(user_dir)}
    assert complete(env, "bakfs ls ", tmp_path, script=loader) == ["vol-alpha", "vol-beta"]

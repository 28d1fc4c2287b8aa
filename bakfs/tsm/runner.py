"""Running dsmc: backup, restore and delete of one TSM object per bakfs backup.

What it adds to Cinder's driver (docs/tsm.md says why):
- the password goes to dsmc in a private options file (mode 0600, in a 0700 directory,
  removed after the run), never on the command line; with no password configured dsmc uses
  its stored one (PASSWORDACCESS GENERATE);
- dsmc runs with stdin at /dev/null, in its own session (no controlling terminal), with
  `LC_ALL=C` and pinned date/number formats; stdout and stderr are read together and each line
  is checked for a prompt: a dsmc that asks a question is killed (SIGKILL, as IBM advises);
- rc and ANS codes become `bakfs.tsm.dsmc` errors; sizes and sha256 are measured by bakfs.

Each backup gets its own TSM object name, `<volume_prefix>-<backup_id>`, as in Cinder: a hard
link to the source (in /dev for a block device, beside the file for a regular file), removed
afterwards whatever happens.

Two APIs: blocking methods for worker threads and the CLI (subprocess), and
`restore_to_file_async` for the staging manager (trio's native process API, no thread).
Knows nothing of the object store, the staging area or FUSE.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import selectors
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import trio

from bakfs.config import TsmOptions
from bakfs.devices import check_device_free
from bakfs.errors import (
    TsmClientError,
    TsmError,
    TsmIntegrityError,
    TsmPrompted,
    TsmSourceError,
    TsmUnreachable,
)
from bakfs.threads import Background, Bridge, plain_errors
from bakfs.tsm import dsmc
from bakfs.tsm.dsmc import Mode, Output
from bakfs.tsm.records import TsmRecord

log = logging.getLogger(__name__)

DEFAULT_OPTFILE = "/opt/tivoli/tsm/client/ba/bin/dsm.opt"
HASH_BLOCK = 4 << 20


@dataclasses.dataclass(frozen=True)
class Completed:
    """One finished dsmc run. `argv` is safe to log; `rc` is None when dsmc was killed."""

    argv: list[str]
    rc: int | None
    output: Output
    seconds: float


@dataclasses.dataclass(frozen=True)
class BackupResult:
    mode: Mode
    path: str
    size: int
    sha256: str
    seconds: float


class _Lines:
    """Splits the bytes of stdout and stderr into lines, in arrival order, and notices a prompt
    (prompts end without a newline, so the unfinished line is checked too)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._partial: dict[str, str] = {"stdout": "", "stderr": ""}
        self.prompt: str | None = None

    def feed(self, stream: str, data: bytes) -> None:
        text = self._partial[stream] + data.decode("utf-8", "replace")
        *complete, rest = text.split("\n")
        for line in complete:
            self._line(line)
        self._partial[stream] = rest
        if rest and self.prompt is None and dsmc.is_prompt(rest):
            self.prompt = rest.strip()

    def _line(self, line: str) -> None:
        line = line.rstrip("\r")
        self.lines.append(line)
        if self.prompt is None and dsmc.is_prompt(line):
            self.prompt = line.strip()
        message = dsmc.parse_message(line)
        if message is not None:
            log.debug("dsmc: %s", line)

    def finish(self) -> Output:
        for stream in ("stdout", "stderr"):
            if self._partial[stream]:
                self._line(self._partial[stream])
                self._partial[stream] = ""
        return dsmc.parse_output(self.lines)


class DsmcRunner:
    """Runs dsmc as `options` say. `device_dir` is where image-mode links are made (Cinder:
    /dev); `timeout` bounds one run (None: no bound); `env` overrides the environment."""

    def __init__(self, options: TsmOptions, *, device_dir: str = "/dev",
                 timeout: float | None = None, env: Mapping[str, str] | None = None) -> None:
        self.options = options
        self.device_dir = device_dir
        self.timeout = timeout
        self._env_override = None if env is None else dict(env)

    @property
    def _env(self) -> dict[str, str]:
        """dsmc's environment: ours (read at each run) or the given one, with LC_ALL=C."""
        env = dict(os.environ if self._env_override is None else self._env_override)
        env["LC_ALL"] = "C"
        return env

    # ---- the password ------------------------------------------------------------------

    def _base_options(self) -> str:
        path = self._env.get("DSM_CONFIG") or DEFAULT_OPTFILE
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise TsmClientError(f"cannot read the dsmc options file {path}: "
                                 f"{exc.strerror}") from None

    def make_optfile(self) -> str | None:
        """A private options file holding the password, or None when dsmc's stored password
        is to be used. The caller removes it with `remove_optfile`."""
        if self.options.password is None:
            return None
        text = dsmc.options_file_text(self._base_options(), self.options.password.reveal())
        directory = tempfile.mkdtemp(prefix="bakfs-dsmc-")  # mode 0700
        path = os.path.join(directory, "dsm.opt")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    @staticmethod
    def remove_optfile(path: str | None) -> None:
        if path is not None:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    @contextlib.contextmanager
    def _optfile(self) -> Iterator[str | None]:
        path = self.make_optfile()
        try:
            yield path
        finally:
            self.remove_optfile(path)

    # ---- running -------------------------------------------------------------------------

    def run(self, build: Callable[[str | None], list[str]], what: str) -> Completed:
        """Run `build(optfile)` to its end (blocking) and return what it printed. Raises
        TsmPrompted when dsmc asks a question, TsmClientError when it cannot start,
        TsmUnreachable on timeout."""
        with self._optfile() as optfile:
            argv = build(optfile)
            shown = dsmc.masked_argv(argv)
            log.info("running %s", " ".join(shown))
            start = time.monotonic()
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=self._env,
                                        start_new_session=True)
            except OSError as exc:
                raise TsmClientError(f"{what}: cannot run {argv[0]}: {exc.strerror} "
                                     "(tsm.dsmc_path)") from None
            lines = _Lines()
            timed_out = False
            try:
                timed_out = self._pump(proc, lines)
            finally:
                if proc.poll() is None:
                    proc.kill()
                rc = proc.wait()
            output = lines.finish()
        return self._finish(shown, rc, output, time.monotonic() - start, what, timed_out)

    def _pump(self, proc: subprocess.Popen[bytes], lines: _Lines) -> bool:
        """Read stdout and stderr together until both close; kill dsmc at a prompt or when the
        timeout passes (returns True then)."""
        assert proc.stdout is not None and proc.stderr is not None
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
            sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
            while sel.get_map():
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                events = sel.select(wait)
                if not events and deadline is not None and time.monotonic() >= deadline:
                    proc.kill()
                    return True
                for key, _ in events:
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                        continue
                    lines.feed(key.data, data)
                if lines.prompt is not None and proc.poll() is None:
                    proc.kill()
        return False

    def _finish(self, shown: list[str], rc: int, output: Output, seconds: float, what: str,
                timed_out: bool) -> Completed:
        code = None if rc < 0 else rc
        for message in output.messages:
            if message.severity != "I":
                log.info("dsmc %s: %s", shown[1], message)
        if timed_out:
            raise TsmUnreachable(f"{what}: dsmc did not finish within {self.timeout:.0f} s "
                                 "and was killed", rc=code,
                                 messages=[str(m) for m in output.messages])
        if output.prompt is not None and not output.codes() & {"ANS1025E", "ANS1017E"}:
            raise dsmc.error_for(output, code, what)
        log.debug("dsmc finished: rc %s in %.1f s", code, seconds)
        return Completed(shown, code, output, seconds)

    async def run_async(self, build: Callable[[str | None], list[str]], what: str,
                        bridge: Bridge) -> Completed:
        """`run` on trio's process API: no thread waits on dsmc. Cancelling kills dsmc."""
        optfile = await bridge.run_disk(self.make_optfile)
        try:
            argv = build(optfile)
            shown = dsmc.masked_argv(argv)
            log.info("running %s", " ".join(shown))
            start = time.monotonic()
            try:
                proc = await trio.lowlevel.open_process(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, env=self._env, start_new_session=True)
            except OSError as exc:
                raise TsmClientError(f"{what}: cannot run {argv[0]}: {exc.strerror} "
                                     "(tsm.dsmc_path)") from None
            lines = _Lines()
            timed_out = False

            async def pump(stream: trio.abc.ReceiveStream, name: str) -> None:
                while data := await stream.receive_some(65536):
                    lines.feed(name, data)
                    if lines.prompt is not None and proc.returncode is None:
                        proc.kill()

            try:
                assert proc.stdout is not None and proc.stderr is not None
                with trio.move_on_after(self.timeout if self.timeout else float("inf")) as scope, \
                        plain_errors():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(pump, proc.stdout, "stdout")
                        nursery.start_soon(pump, proc.stderr, "stderr")
                    await proc.wait()
                timed_out = scope.cancelled_caught
            finally:
                if proc.returncode is None:
                    proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
                    for pipe in (proc.stdout, proc.stderr):
                        if pipe is not None:
                            await pipe.aclose()
            rc = proc.returncode
            assert rc is not None
            output = lines.finish()
        finally:
            with trio.CancelScope(shield=True):
                await bridge.run_disk(self.remove_optfile, optfile)
        return self._finish(shown, rc, output, time.monotonic() - start, what, timed_out)

    # ---- operations ----------------------------------------------------------------------

    def link_name(self, mode: Mode, real_path: str, backup_id: str) -> str:
        """Cinder's consistent name: `<prefix>-<backup_id>` in /dev (image) or beside the
        file (file mode)."""
        name = f"{self.options.volume_prefix}-{backup_id}"
        directory = self.device_dir if mode == "image" else os.path.dirname(real_path)
        return os.path.join(directory, name)

    @staticmethod
    def source_mode(path: str) -> tuple[str, Mode]:
        """The real path and mode of a backup source, as Cinder decides: a block device is
        backed up in image mode, a regular file in file mode, anything else is refused."""
        real = os.path.realpath(path)
        try:
            mode = os.stat(real).st_mode
        except OSError as exc:
            raise TsmSourceError(f"cannot back up {path}: {exc.strerror}") from None
        if stat.S_ISBLK(mode):
            return real, "image"
        if stat.S_ISREG(mode):
            return real, "file"
        raise TsmSourceError(f"cannot back up {path}: it is a {_kind(mode)}; TSM backups take "
                             "a block device (image mode) or a regular file (file mode)")

    def backup(self, source: str, backup_id: str) -> BackupResult:
        """Back up `source` as a new TSM object; bakfs hashes the source meanwhile, so the
        record's size and sha256 are exact. The link is removed whatever happens."""
        real, mode = self.source_mode(source)
        link = self.link_name(mode, real, backup_id)
        what = f"TSM backup of {source} ({mode} mode, as {link})"
        try:
            os.link(real, link)
        except OSError as exc:
            raise TsmSourceError(f"{what}: cannot make the link {link}: {exc.strerror}") from None
        start = time.monotonic()
        try:
            hashed = Background(lambda: hash_file(link), "tsm-hash")
            try:
                completed = self.run(
                    lambda optfile: dsmc.backup_argv(
                        self.options.dsmc_path, mode, link,
                        compression=self.options.compression, optfile=optfile), what)
                dsmc.check_backup(completed.output, completed.rc, what)
            finally:
                hashed.thread.join()  # the link goes only once nothing reads it
            try:
                size, digest = hashed.result()
            except OSError as exc:
                raise TsmSourceError(f"{what}: reading the source failed: "
                                     f"{exc.strerror}") from None
        finally:
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("%s: cannot remove the link %s: %s", what, link, exc.strerror)
        return BackupResult(mode, link, size, digest, time.monotonic() - start)

    def delete(self, record: TsmRecord) -> bool:
        """Delete the TSM object; False (and a warning) when it was already gone."""
        what = f"TSM delete of {record.path} (backup {record.backup_id})"
        completed = self.run(lambda optfile: dsmc.delete_argv(
            self.options.dsmc_path, record.mode, record.path, optfile=optfile), what)
        deleted = dsmc.check_delete(completed.output, completed.rc, what)
        if not deleted:
            log.warning("%s: the object was not on the TSM server any more", what)
        return deleted

    def _restore_argv(self, record: TsmRecord, dest: str, optfile: str | None) -> list[str]:
        return dsmc.restore_argv(self.options.dsmc_path, record.mode, record.path, dest,
                                 to_file=record.mode == "image", optfile=optfile)

    def restore_to_file(self, record: TsmRecord, dest: str) -> None:
        """Restore into the regular file `dest` (created or replaced) and verify it."""
        what = f"TSM restore of backup {record.backup_id} to {dest}"
        completed = self.run(lambda optfile: self._restore_argv(record, dest, optfile), what)
        dsmc.check_restore(completed.output, completed.rc, what)
        verify_file(dest, record, what)

    def restore_to_device(self, record: TsmRecord, device: str, scratch_dir: str) -> None:
        """Restore onto a block device. Image mode: as Cinder, dsmc writes to the backup's own
        name linked to the device. File mode: restore to a scratch file, verify, copy."""
        what = f"TSM restore of backup {record.backup_id} to {device}"
        check_device_free(device)  # dsmc and the copy open it themselves: refuse a mounted one
        if record.mode == "file":
            with tempfile.TemporaryDirectory(dir=scratch_dir, prefix="restore-") as tmp:
                staged = os.path.join(tmp, "volume")
                self.restore_to_file(record, staged)
                copy_file(staged, device, record.size)
            verify_file(device, record, what)
            return
        try:
            os.link(device, record.path)
        except OSError as exc:
            raise TsmSourceError(f"{what}: cannot make the link {record.path}: "
                                 f"{exc.strerror}") from None
        try:
            completed = self.run(lambda optfile: dsmc.restore_argv(
                self.options.dsmc_path, "image", record.path, None, to_file=False,
                optfile=optfile), what)
            dsmc.check_restore(completed.output, completed.rc, what)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(record.path)
        verify_file(device, record, what)

    async def restore_to_file_async(self, record: TsmRecord, dest: str,
                                    bridge: Bridge) -> Completed:
        """Start dsmc restoring into `dest` and return when it ends; raises TsmError when it
        failed. The caller watches `dest` grow and verifies the result."""
        what = f"TSM restore of backup {record.backup_id}"
        completed = await self.run_async(
            lambda optfile: self._restore_argv(record, dest, optfile), what, bridge)
        dsmc.check_restore(completed.output, completed.rc, what)
        return completed


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISFIFO, "pipe"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def hash_file(path: str, limit: int | None = None) -> tuple[int, str]:
    """(bytes, sha256) of a file or block device, read to its end (or `limit` bytes)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while limit is None or size < limit:
            want = HASH_BLOCK if limit is None else min(HASH_BLOCK, limit - size)
            data = f.read(want)
            if not data:
                break
            digest.update(data)
            size += len(data)
    return size, digest.hexdigest()


def verify_file(path: str, record: TsmRecord, what: str) -> None:
    """The restored bytes must be exactly those bakfs recorded (a block device may be larger:
    only its first `size` bytes count)."""
    is_device = stat.S_ISBLK(os.stat(path).st_mode)
    size, digest = hash_file(path, record.size if is_device else None)
    if size != record.size:
        raise TsmIntegrityError(f"{what}: restored {size} bytes, but the backup has "
                                f"{record.size}")
    if digest != record.sha256:
        raise TsmIntegrityError(f"{what}: the restored bytes have sha256 {digest}, but the "
                                f"backup recorded {record.sha256}")


def copy_file(source: str, target: str, size: int) -> None:
    with open(source, "rb", buffering=0) as src, open(target, "r+b", buffering=0) as dst:
        done = 0
        while done < size:
            data = src.read(min(HASH_BLOCK, size - done))
            if not data:
                break
            dst.write(data)
            done += len(data)
        os.fsync(dst.fileno())


__all__ = ["BackupResult", "Completed", "DsmcRunner", "TsmError", "TsmPrompted", "hash_file"]

"""The pyfuse3 adapter: kernel requests in, `MountService` and `Tree` calls out.

The only module that knows pyfuse3 and errno. Every handler runs under `_errors`, the one
translation point: a missing name is ENOENT, a write outside `incoming/` EROFS, a bad
volume name EINVAL, a busy volume EBUSY, and any store or integrity failure EIO with one
ERROR line naming what failed. No other exception may leave a handler (pyfuse3 would stop).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from bakfs.errors import BakfsError, FormatError, OutOfOrderWrite, VolumeBusy
from bakfs.mount.namespace import REFRESH_XATTR, ROOT_INODE, Node, incoming_target
from bakfs.mount.permissions import Permissions
from bakfs.mount.service import MountService

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

BLOCK_TIMEOUT = 3600.0  # backups are immutable
DIR_TIMEOUT = 5.0  # volume directories change when backups appear (also invalidated)


def _errors(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except VolumeBusy as exc:
            log.warning("%s", exc)
            raise pyfuse3.FUSEError(errno.EBUSY) from None
        except (OutOfOrderWrite, FormatError) as exc:
            log.error("%s", exc)
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        except BakfsError as exc:
            log.error("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


class Operations(pyfuse3.Operations):
    """Backups as read-only files, `incoming/` as a write-only backup sink."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, service: MountService, permissions: Permissions | None = None) -> None:
        super().__init__()
        self.service = service
        self.tree = service.tree
        self.permissions = permissions or Permissions(os.getuid(), os.getgid())

    def _node(self, inode: int) -> Node:
        node = self.tree.node(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        attr.generation = 0
        attr.st_uid, attr.st_gid = self.permissions.uid, self.permissions.gid
        attr.st_nlink = 1
        attr.st_size = node.size
        attr.st_blksize = 128 * 1024
        mode = self.permissions.mode(node, node.inode == ROOT_INODE)
        timeout = BLOCK_TIMEOUT
        if node.kind == "dir":
            attr.st_mode = stat.S_IFDIR | mode
            attr.st_nlink = 2
            timeout = DIR_TIMEOUT
        elif node.kind == "incoming_dir":
            attr.st_mode = stat.S_IFDIR | mode
            attr.st_nlink = 2
            timeout = 0
        elif node.kind == "link":
            attr.st_mode = stat.S_IFLNK | mode
            attr.st_size = len(node.target or "")
            timeout = DIR_TIMEOUT
        elif node.kind == "incoming":
            attr.st_mode = stat.S_IFREG | mode
            writer = self.service.writers.get(node.volume_id or "")
            attr.st_size = writer.written if writer else 0
            timeout = 0
        elif node.kind == "status":
            attr.st_mode = stat.S_IFREG | mode
            attr.st_size = 0  # generated on open; read with direct_io
            timeout = 0
        else:
            attr.st_mode = stat.S_IFREG | mode
        held = node.held if node.held is not None else attr.st_size
        attr.st_blocks = (held + 511) // 512
        ns = int(node.mtime * 1e9)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = ns
        attr.entry_timeout = timeout
        attr.attr_timeout = timeout
        return attr

    @_errors
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        await self.service.first_request()
        text = os.fsdecode(name)
        if text == ".":
            return self.attributes(self._node(parent_inode))
        if text == "..":
            node = self._node(parent_inode)
            return self.attributes(self._node(node.parent or ROOT_INODE))
        node = self.tree.lookup(parent_inode, text)
        if node is None:  # the store may have it: wait until it would show
            node = await self.service.find_name(self._node(parent_inode), text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attributes(node)

    @_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        await self.service.first_request()
        return self.attributes(self._node(inode))

    @_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if node.kind != "link" or node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    @_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self.service.before_listing(node)
        return inode

    @_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self.tree.listing(fh)
        for position, node in enumerate(entries[start_id:], start=start_id + 1):
            if not pyfuse3.readdir_reply(token, os.fsencode(node.name), self.attributes(node),
                                         position):
                break

    @_errors
    async def open(self, inode: int, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if node.kind == "incoming":
            raise pyfuse3.FUSEError(errno.EBUSY)  # its writer has it open
        if writing:
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = self.service.open_handle(node)
        info = pyfuse3.FileInfo(fh=fh)
        if node.kind == "backup":
            info.keep_cache = True  # immutable: the kernel's page cache stays valid
        else:
            info.direct_io = True
        return info

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        """A view of cached bytes is replied as it is: pyfuse3 takes any buffer."""
        return await self.service.read(fh, off, size)

    @_errors
    async def release(self, fh: int) -> None:
        await self.service.release(fh)

    @_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        if parent_inode != self.tree.incoming.inode:
            raise pyfuse3.FUSEError(errno.EROFS)
        text = os.fsdecode(name)
        try:
            volume_id, full = incoming_target(text)
        except FormatError as exc:
            log.error("incoming/%r refused: %s", text, exc)
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        fh, node = await self.service.start_incoming(volume_id, ctx.pid, full=full, name=text)
        info = pyfuse3.FileInfo(fh=fh, direct_io=True)
        return info, self.attributes(node)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.service.write(fh, off, buf)

    @_errors
    async def flush(self, fh: int) -> None:
        await self.service.finish(fh, closing=True)

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.service.finish(fh, closing=False)

    @_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if node.kind != "incoming":
            raise pyfuse3.FUSEError(errno.EROFS)
        if fields.update_size:  # O_TRUNC, or a sparse copy's last hole: failing fails it
            await self.service.truncate(node, attr.st_size)
        return self.attributes(node)  # mode, owner, times: a backup keeps none, ignored

    @_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        values = await self.service.xattrs(self._node(inode))
        value = values.get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value.encode()

    @_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        """Only one: `user.bakfs.refresh` on the root lists the store now (`bakfs refresh`);
        the reply waits for it, so the new backups are there when setxattr returns."""
        if inode != ROOT_INODE or os.fsdecode(name) != REFRESH_XATTR:
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        await self.service.refresh()

    @_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(n) for n in await self.service.xattrs(self._node(inode))]

    @_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        total = sum(n.size for n in self.tree.nodes.values() if n.kind == "backup")
        data.f_blocks = total // 4096
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.tree.nodes)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

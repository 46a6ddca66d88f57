#!/usr/bin/env python3
"""faultfs: a FUSE passthrough file system that fails syncs on demand.

    faultfs.py BACKING_DIR MOUNTPOINT

Everything is passed through to BACKING_DIR, except that while the file
BACKING_DIR/.fail-sync exists, fsync/fdatasync (and the syncs the kernel
issues for O_DSYNC writes) return EIO, and while BACKING_DIR/.fail-write
exists, writes return EIO, and while BACKING_DIR/.fail-read exists, reads
of segment files (*.wal) return EIO, as a device with a media error or a
file system whose checksums failed would. The control files are not visible through the
mount. Used by tests/sync_failure.rs to make the kernel report a failed
sync to aiowal through a real file system path. Runs in the foreground
until unmounted.
"""
import errno
import os
import sys

try:  # fusepy from PyPI installs the module as `fuse`...
    from fuse import FUSE, FuseOSError, Operations
except ImportError:  # ...Debian's python3-fusepy as `fusepy`.
    from fusepy import FUSE, FuseOSError, Operations

CONTROL = (".fail-sync", ".fail-write", ".fail-read")


class FaultFS(Operations):
    def __init__(self, root):
        self.root = os.path.realpath(root)

    def _p(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _failing(self, what):
        return os.path.exists(os.path.join(self.root, ".fail-" + what))

    # metadata
    def getattr(self, path, fh=None):
        st = os.lstat(self._p(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid", "st_blocks")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + [n for n in os.listdir(self._p(path)) if n not in CONTROL]

    def mkdir(self, path, mode):
        os.mkdir(self._p(path), mode)

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def unlink(self, path):
        os.unlink(self._p(path))

    def rename(self, old, new):
        os.rename(self._p(old), self._p(new))

    def truncate(self, path, length, fh=None):
        with open(self._p(path), "r+b") as f:
            f.truncate(length)

    def utimens(self, path, times=None):
        os.utime(self._p(path), times)

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)

    def statfs(self, path):
        st = os.statvfs(self._p(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    # files
    def open(self, path, flags):
        return os.open(self._p(path), flags & ~os.O_DIRECT if hasattr(os, "O_DIRECT") else flags)

    def create(self, path, mode, fi=None):
        return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, size, offset, fh):
        if self._failing("read") and path.endswith(".wal"):
            raise FuseOSError(errno.EIO)
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        if self._failing("write"):
            raise FuseOSError(errno.EIO)
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0

    def fsync(self, path, datasync, fh):
        if self._failing("sync"):
            raise FuseOSError(errno.EIO)
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        if self._failing("sync"):
            raise FuseOSError(errno.EIO)
        return 0

    def opendir(self, path):
        return 0

    def releasedir(self, path, fh):
        return 0


if __name__ == "__main__":
    backing, mnt = sys.argv[1], sys.argv[2]
    FUSE(FaultFS(backing), mnt, foreground=True, nothreads=False, allow_other=False)

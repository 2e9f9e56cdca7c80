#!/usr/bin/env python3
"""A FUSE passthrough filesystem whose fsync fails on demand, for the fsyncgate test.

Usage: failfs.py BACKING_DIR MOUNT_POINT CONTROL_FILE

Mounts BACKING_DIR at MOUNT_POINT (foreground; unmount with `umount MOUNT_POINT`). Every
operation is passed through to BACKING_DIR, except that while CONTROL_FILE exists, fsync and
fdatasync fail with EIO: a real failing sync as the kernel reports it to the process that
calls fdatasync(2), which device-mapper's error targets would give on a kernel that has them.

Needs fusepy (pip) and libfuse2; scripts/ci-deps.sh installs both.
"""
import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations


class FailFs(Operations):
    def __init__(self, root, control):
        self.root = root
        self.control = control

    def _path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    # Files and directories: plain passthrough.
    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
                "st_size", "st_uid", "st_blocks")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def mkdir(self, path, mode):
        os.mkdir(self._path(path), mode)

    def rmdir(self, path):
        os.rmdir(self._path(path))

    def unlink(self, path):
        os.unlink(self._path(path))

    def rename(self, old, new):
        os.rename(self._path(old), self._path(new))

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)

    def utimens(self, path, times=None):
        os.utime(self._path(path), times)

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    def open(self, path, flags):
        return os.open(self._path(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        os.truncate(self._path(path), length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)

    # The point of this filesystem.
    def fsync(self, path, datasync, fh):
        if os.path.exists(self.control):
            raise FuseOSError(errno.EIO)
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    backing, mount, control = sys.argv[1:]
    FUSE(FailFs(os.path.abspath(backing), os.path.abspath(control)), mount,
         foreground=True, nothreads=False)


if __name__ == "__main__":
    main()

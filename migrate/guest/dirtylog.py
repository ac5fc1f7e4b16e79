"""The kernel's dirty log of a guest's RAM: userfaultfd write-protect + ``PAGEMAP_SCAN``.

Xen tracks a guest's writes in the hypervisor and the toolstack "peeks and cleans" the log
each round. A process guest gets the same from Linux (6.7+): the guest registers its RAM
mapping with a userfaultfd in *asynchronous* write-protect mode (:func:`register_wp_async`,
called in the guest; the kernel resolves the write faults itself and nobody reads the fd),
and the daemon reads the written pages and write-protects them again in one ``PAGEMAP_SCAN``
ioctl on ``/proc/<pid>/pagemap`` (:class:`DirtyLog`). reference.md §8 has the calls.

Pure ctypes + numpy: imported by the guest program as well as by the daemon.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os

import numpy as np

PAGE_SIZE = 4096

UNAVAILABLE = (
    "live migration needs userfaultfd write-protect (Linux 6.7+ with PAGEMAP_SCAN); "
    "non-live migration still works"
)
"""The reason given when the kernel cannot track a guest's writes."""

_SYS_USERFAULTFD = 323  # x86_64
_UFFD_USER_MODE_ONLY = 1
_UFFD_API = 0xAA
_UFFDIO_API = 0xC018AA3F
_UFFDIO_REGISTER = 0xC020AA00
_UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
_UFFD_FEATURE_WP_ASYNC = 1 << 15
_UFFDIO_REGISTER_MODE_WP = 1 << 1

_PAGEMAP_SCAN = 0xC0606610
_PM_SCAN_WP_MATCHING = 1
_PM_SCAN_CHECK_WPASYNC = 2
_PAGE_IS_WRITTEN = 1 << 1
_ARG_WORDS = 12  # struct pm_scan_arg: twelve u64
_VEC_REGIONS = 65536  # struct page_region {start, end, categories}: 1.5 MiB of vec

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)


class DirtyLogError(OSError):
    """The kernel refused a userfaultfd or PAGEMAP_SCAN call (errno and what was tried)."""


def _fail(what: str) -> DirtyLogError:
    code = ctypes.get_errno()
    return DirtyLogError(code, f"{what}: {os.strerror(code)}")


def mapping_address(mapping: mmap.mmap) -> int:
    """The virtual address of ``mapping`` in this process."""
    return ctypes.addressof(ctypes.c_char.from_buffer(mapping))


def register_wp_async(start: int, length: int) -> int:
    """Register ``[start, start+length)`` of this process with a new userfaultfd in
    asynchronous write-protect mode; the fd, to keep open for as long as the log is wanted
    (closing it ends the registration). DirtyLogError when the kernel cannot."""
    flags = os.O_CLOEXEC | os.O_NONBLOCK
    if os.geteuid() != 0:
        flags |= _UFFD_USER_MODE_ONLY
    fd = _libc.syscall(_SYS_USERFAULTFD, flags)
    if fd < 0:
        raise _fail("userfaultfd")
    try:
        api = np.array(
            [
                _UFFD_API,
                _UFFD_FEATURE_WP_ASYNC
                | _UFFD_FEATURE_WP_UNPOPULATED
                | _UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
                0,
            ],
            dtype=np.uint64,
        )
        if _libc.ioctl(fd, _UFFDIO_API, api.ctypes.data) < 0:
            raise _fail("UFFDIO_API with WP_ASYNC")
        register = np.array([start, length, _UFFDIO_REGISTER_MODE_WP, 0], dtype=np.uint64)
        if _libc.ioctl(fd, _UFFDIO_REGISTER, register.ctypes.data) < 0:
            raise _fail("UFFDIO_REGISTER in write-protect mode")
    except BaseException:
        os.close(fd)
        raise
    return fd


class DirtyLog:
    """The dirty log of ``pages`` pages of process ``pid`` mapped at virtual address
    ``start`` (registered there by :func:`register_wp_async`): :meth:`scan` peeks and cleans.

    Opening needs ptrace-read access to the process (the daemon's own children qualify).
    """

    def __init__(self, pid: int, start: int, pages: int) -> None:
        if start % PAGE_SIZE or pages <= 0:
            raise ValueError(f"bad RAM range: start {start:#x}, {pages} pages")
        self.start = start
        self.pages = pages
        self._fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        self._vec = np.zeros((_VEC_REGIONS, 3), dtype=np.uint64)
        self._arg = np.zeros(_ARG_WORDS, dtype=np.uint64)

    def close(self) -> None:
        """Close the pagemap file; idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def scan(self) -> np.ndarray:
        """The runs of pages written since the previous scan, write-protected again: an
        ``(n, 2)`` int64 array of ``[start, end)`` page numbers relative to the RAM start,
        ascending and coalesced. DirtyLogError when the kernel refuses (ENOTTY/EINVAL: no
        PAGEMAP_SCAN; EPERM: the range is not registered for asynchronous write-protect)."""
        if self._fd < 0:
            raise DirtyLogError(errno.EBADF, "the dirty log is closed")
        end = self.start + self.pages * PAGE_SIZE
        arg = self._arg
        chunks = []
        walk = self.start
        while walk < end:
            arg[:] = (
                _ARG_WORDS * 8,
                _PM_SCAN_WP_MATCHING | _PM_SCAN_CHECK_WPASYNC,
                walk,
                end,
                0,
                self._vec.ctypes.data,
                _VEC_REGIONS,
                0,
                0,
                _PAGE_IS_WRITTEN,
                0,
                _PAGE_IS_WRITTEN,
            )
            filled = _libc.ioctl(self._fd, _PAGEMAP_SCAN, arg.ctypes.data)
            if filled < 0:
                raise _fail("PAGEMAP_SCAN")
            if filled:
                chunks.append(self._vec[:filled, :2].copy())
            if filled < _VEC_REGIONS:
                break
            walk = int(arg[4])  # walk_end: a full vec means "again from here"
        if not chunks:
            return np.zeros((0, 2), dtype=np.int64)
        runs = ((np.concatenate(chunks) - self.start) // PAGE_SIZE).astype(np.int64)
        return coalesce(runs)


def coalesce(runs: np.ndarray) -> np.ndarray:
    """Ascending ``[start, end)`` runs with the touching ones merged."""
    if len(runs) < 2:
        return runs
    breaks = np.flatnonzero(runs[1:, 0] != runs[:-1, 1]) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks - 1, [len(runs) - 1]))
    return np.stack((runs[starts, 0], runs[ends, 1]), axis=1)


def probe() -> str | None:
    """None when this kernel can track a process's writes as guests need (a one-page memfd
    of this process registered and scanned), else the reason it cannot."""
    fd = os.memfd_create("xfer-dirtylog-probe", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 2 * PAGE_SIZE)
        with mmap.mmap(fd, 2 * PAGE_SIZE) as mapping:
            view = ctypes.c_char.from_buffer(mapping)
            try:
                start = ctypes.addressof(view)
                uffd = register_wp_async(start, 2 * PAGE_SIZE)
                try:
                    log = DirtyLog(os.getpid(), start, 2)
                    try:
                        log.scan()
                        mapping[PAGE_SIZE] = 1
                        written = log.scan()
                    finally:
                        log.close()
                finally:
                    os.close(uffd)
            finally:
                del view
        if written.tolist() != [[1, 2]]:
            return f"{UNAVAILABLE} (a probe write to page 1 was logged as {written.tolist()})"
    except OSError as e:
        return f"{UNAVAILABLE} ({e.strerror or e})"
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return None

"""Durable file operations an SR is built on: a file put in place by one rename, synced so
that after a crash it is either wholly there or not at all."""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """Make the entries of the directory ``path`` (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """Make the content of the file ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(part: str, final: str, directory: str) -> None:
    """Put the complete file ``part`` in place as ``final``: synced, renamed, directory synced."""
    fsync_file(part)
    os.replace(part, final)
    fsync_dir(directory)


def unlink(path: str) -> bool:
    """Remove ``path``; whether there was a file to remove."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are the same file (hard links); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False

"""Private state on disk: folders 0700 and files 0600, whatever the umask.

The package's state (the SQLite journal with its ``-wal`` and ``-shm``
files, its lock file) names every run a team trains and their checkpoints,
so it is readable by its owner only.  What the package creates gets the
private mode exactly, even under a umask that would take bits away from
it; a file or folder that exists already keeps the mode its owner chose.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["PRIVATE_DIR", "PRIVATE_FILE", "open_private", "private_dir", "private_file"]

#: The mode of a folder the package creates.
PRIVATE_DIR: Final = 0o700
#: The mode of a file the package creates.
PRIVATE_FILE: Final = 0o600


def private_dir(path: str | os.PathLike[str]) -> None:
    """Create the folder ``path`` and its missing parents, each 0700.

    Folders that exist already are left as they are.

    Raises:
        OSError: A folder cannot be created (or ``path`` is a file).
    """
    path = os.path.abspath(os.fspath(path))
    missing: list[str] = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
            continue  # made meanwhile by someone else: theirs to set
        os.chmod(folder, PRIVATE_DIR)  # the umask may have taken bits away


def open_private(path: str | os.PathLike[str], flags: int = os.O_RDWR) -> int:
    """Open ``path`` with ``flags``, creating it 0600 if it is missing.

    Returns:
        The file descriptor (the caller closes it).

    Raises:
        OSError: The file cannot be opened or created.
    """
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return os.open(path, flags)  # the owner's file keeps its mode
    try:
        os.fchmod(fd, PRIVATE_FILE)  # the umask may have taken bits away
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty and 0600 unless it exists (then leave it alone).

    Raises:
        OSError: The file cannot be created.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)

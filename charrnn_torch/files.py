"""Writing files so that a reader, or a crash, sees the old file or the new one, never half of one.

Every file the project writes (checkpoints, the corpus cache, the downloaded corpus, pages,
results) goes through ``temp_file`` and ``install``: written under a temporary name in the
destination's directory, fsynced, then renamed into place.
"""
import contextlib
import os
import tempfile
from pathlib import Path

from .errors import RunFailed

TEMP_SUFFIX = ".tmp"  # a run directory's start removes .*.tmp files left by a killed writer


@contextlib.contextmanager
def temp_file(dest, mode=None, suffix=TEMP_SUFFIX):
    """(open binary file, its path) under a temporary name beside dest, fsynced when the block
    ends; removed if the block fails. The file is private to its owner (mkstemp's 0o600) unless
    mode says otherwise. The caller renames it into place with install(), or removes it."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f, Path(tmp)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        discard(tmp)
        raise


def install(tmp, dest):
    """Rename a finished temporary file onto dest, and make the rename itself reach the disk (or
    a power cut could undo it). On failure the temporary file is removed."""
    try:
        os.replace(tmp, dest)
    except BaseException:
        discard(tmp)
        raise
    dir_fd = os.open(Path(dest).parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def discard(tmp):
    if os.path.exists(tmp):
        os.unlink(tmp)


def write_atomic(path, data, mode=None):
    """Write bytes to path atomically (see temp_file and install)."""
    with temp_file(path, mode) as (f, tmp):
        f.write(data)
    install(tmp, path)


@contextlib.contextmanager
def could_not_write(what):
    """A failed write (a full disk, a removed directory) inside the block ends the run with one
    line naming what could not be written."""
    try:
        yield
    except OSError as e:
        raise RunFailed(f"could not write {what} ({e.strerror or e})") from None

"""Writing files so that a reader, or a crash, sees the old file or the new one, never half of one;
and the one check on a file before it is read.

Every file the project writes (checkpoints, the corpus cache, the downloaded corpus, pages,
results) goes through ``temp_file`` and ``install``: written under a temporary name in the
destination's directory, fsynced, then renamed into place. The temporary name says which host and
process writes it, so that ``remove_abandoned`` can clear what a killed writer left behind.
"""
import contextlib
import glob
import os
import socket
import stat
import tempfile
from pathlib import Path

from .errors import RunFailed, UserError

TEMP_SUFFIX = ".tmp"  # a run directory's start removes .*.tmp files left by a killed writer
NOT_REGULAR = ((stat.S_ISFIFO, "a pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def check_regular(path, what, example=""):
    """Refuse a path that exists but is not a regular file (or a directory, which callers report
    their own way), before anything opens it: opening a FIFO waits for a writer, possibly forever;
    a pipe can be read only once, where a file is read twice, sought in and fingerprinted; a device
    may never end. example: how to make a file of the stream, for the message."""
    try:
        mode = os.stat(path).st_mode  # stat never opens, so it cannot wait on a FIFO
    except OSError:
        return  # missing or unreachable: the caller's own message
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = next((name for test, name in NOT_REGULAR if test(mode)), "not a file")
    raise UserError(f"{what} {path} is not a regular file ({kind}); write the stream to a file first"
                    f"{', e.g. ' + example if example else ''}")


def writer_tag():
    """This host and process, as written into a temporary file's name."""
    return f"{socket.gethostname()}-{os.getpid()}"


@contextlib.contextmanager
def temp_file(dest, mode=None, suffix=TEMP_SUFFIX):
    """(open binary file, its path) under a temporary name beside dest, fsynced when the block
    ends; removed if the block fails. The file gets the mode open() would give it under the
    user's umask (mkstemp's private 0o600 would lock out a lab sharing a runs folder), unless mode
    says otherwise. The caller renames it into place with install(), or removes it. The name is
    .<dest's name>.<host>-<pid>.<random><suffix>: see remove_abandoned."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.{writer_tag()}.", suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~current_umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            yield f, Path(tmp)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        discard(tmp)
        raise


def current_umask():
    """The process's umask, read without changing it where Linux tells it (/proc/self/status): the
    os.umask() swap, the only other way, briefly changes it for every thread of the process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


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


def remove_abandoned(dest, suffix=TEMP_SUFFIX):
    """Remove dest's temporary files whose writer is gone: a writer killed with SIGKILL cannot
    clean up, and leaves up to a whole dest behind. Only files named by temp_file on this host
    whose process no longer exists are removed; a live writer's (a run still building the same
    cache), another host's (a shared folder) and any other name are left alone. Returns the paths
    removed."""
    dest = Path(dest)
    try:
        found = list(dest.parent.glob(f".{glob.escape(dest.name)}.*{suffix}"))
    except OSError:
        return []
    removed = []
    for path in found:
        writer = path.name[len(dest.name) + 2:-len(suffix)].rpartition(".")[0]  # <host>-<pid>
        who, _, pid = writer.rpartition("-")
        if not writer_gone(who, pid):
            continue
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            path.unlink()
            removed.append(path)
    return removed


def writer_gone(host, pid):
    """Whether the process that wrote a file, named by its host and pid (strings, as read from the
    file's name), is known to be gone: it ran on this host and no process has its pid now. Another
    host's writer, or a name that does not parse, may be alive."""
    return host == socket.gethostname() and pid.isdigit() and not process_exists(int(pid))


def process_exists(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process is there
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


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

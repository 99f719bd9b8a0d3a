"""Writing files so that a reader, or a crash, sees the old file or the new one, never half of one;
and the one check on a file before it is read.

Every file the project writes (checkpoints, the corpus cache, the downloaded corpus, pages,
results) goes through ``temp_file`` and ``install``: written under a temporary name in the
destination's directory, fsynced, then renamed into place. The temporary name says which host and
process writes it, so that ``remove_abandoned`` can clear what a killed writer left behind. A
command writes through ``write_file`` (a whole file), ``writing`` (a file written as it goes) and
``make_dir``: each is atomic, and a failure is ``could_not_write``'s one line. tests/test_layout.py
holds that no other module opens a file for writing.

What a file holds as JSON is ``json_text``'s: valid JSON, a non-finite number written as null.

``check_not_input`` refuses an output path that is one of the files a command reads or must keep.
"""
import contextlib
import glob
import json
import math
import os
import secrets
import socket
import stat
import sys
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
    return _remove_if_abandoned(dest.parent, f".{glob.escape(dest.name)}.*{suffix}", suffix)


def remove_abandoned_in(folder, suffix=TEMP_SUFFIX):
    """remove_abandoned for every file of folder: the temporary files of writers that are gone."""
    return _remove_if_abandoned(Path(folder), f".*{suffix}", suffix)


def _remove_if_abandoned(folder, pattern, suffix):
    try:
        found = list(folder.glob(pattern))
    except OSError:
        return []
    removed = []
    for path in found:
        # .<dest>.<host>-<pid>.<random><suffix>: the writer is what stands before the random part
        writer = path.name[:-len(suffix)].rpartition(".")[0]
        who, _, pid = writer.rpartition("-")
        if not (who.endswith("." + socket.gethostname()) and writer_gone(socket.gethostname(), pid)):
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


def claim(path):
    """Create path holding this host and process (writer_tag), only if no file is there: a lock
    whose holder writer_gone can check. Whether this process now holds it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(writer_tag())
    return True


def process_exists(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process is there
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def link_atomic(src, dest):
    """dest becomes another name for src's current content, atomically: a hard link (no copy, and
    src's later replacement by os.replace leaves it alone), or a copy where links are refused."""
    src, dest = Path(src), Path(dest)
    tmp = dest.with_name(f".{dest.name}.{writer_tag()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        os.link(src, tmp)
        os.replace(tmp, dest)
    except OSError:
        discard(tmp)
        write_atomic(dest, src.read_bytes())


def write_atomic(path, data, mode=None):
    """Write bytes to path atomically (see temp_file and install)."""
    with temp_file(path, mode) as (f, tmp):
        f.write(data)
    install(tmp, path)


def write_file(path, data, mode=None):
    """What a command writes, whole: atomically (write_atomic); a failure is one line (could_not_write)."""
    with could_not_write(path):
        write_atomic(path, data, mode)


def make_dir(path):
    """A directory a command writes into, made if missing; a failure is one line (could_not_write)."""
    with could_not_write(path):
        Path(path).mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def writing(path, mode=None):
    """A function write(bytes) that streams into path's temporary file (temp_file), installed at path
    when the block ends, discarded if it fails. Only the file's own failures are could_not_write's
    line: an error of the block (a closed stdout, Ctrl-C) passes through as it was raised."""
    stack = contextlib.ExitStack()
    with could_not_write(path):
        f, tmp = stack.enter_context(temp_file(path, mode))

    def write(data):
        with could_not_write(path):
            f.write(data)
    try:
        yield write
    except BaseException:
        if not stack.__exit__(*sys.exc_info()):  # temp_file discards its file
            raise
    with could_not_write(path):
        stack.close()  # flushed and fsynced
        install(tmp, path)


@contextlib.contextmanager
def live_log(path):
    """A function write(str) appending to the log file path as lines come, flushed each time, for a
    reader to tail while it grows: the one file not written atomically, since its reader wants the
    lines now. A failure is could_not_write's one line."""
    with could_not_write(path):
        f = open(path, "w", encoding="utf-8")

    def write(text):
        with could_not_write(path):
            f.write(text)
            f.flush()
    try:
        yield write
    finally:
        f.close()


def same_file(a, b):
    """Whether writing path a would replace file b: the same path once links are followed, or the
    same file under another name (a hard link)."""
    try:
        return Path(a).resolve() == Path(b).resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(flag, out, keep):
    """Refuse flag's output path out when it is one of keep: (path, what it is) pairs, the files the
    command reads or must leave alone. Nothing is written: an atomic write would replace them."""
    for path, what in keep:
        if same_file(out, path):
            raise UserError(f"{flag} {out} is {what}: writing there would replace it; choose another file")


@contextlib.contextmanager
def could_not_write(what):
    """A failed write (a full disk, a removed directory) inside the block ends the run with one
    line naming what could not be written."""
    try:
        yield
    except OSError as e:
        raise RunFailed(f"could not write {what} ({e.strerror or e})") from None


def finite_or_none(obj):
    """obj (dicts, lists, tuples, numbers, strings) with every non-finite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def json_text(obj, **dumps_args):
    """obj as valid JSON: NaN and Infinity, which JSON has no words for (json.dumps would write them
    bare, and JSON.parse refuse the file), become null."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **dumps_args)

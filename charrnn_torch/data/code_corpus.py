"""The built-in corpus ``data.path: python-stdlib``: Python source code, from the standard library
of the interpreter that runs the training, so it needs no download.

The rule, in one place:

- the ``.py`` files under ``sysconfig.get_paths()["stdlib"]``, leaving out every directory named in
  ``EXCLUDED_DIRS`` (installed packages and the test suites);
- sorted by their path relative to the standard library (``/``-separated);
- each file's text followed by one newline, so that files are parted by a blank line;
- a file that is not valid UTF-8, or cannot be read, is skipped and counted;
- cut at ``data.stdlib_max_bytes`` bytes: the last file used may end mid-file (at a whole
  character); files after the cut are not read.

The text is written once, atomically, to the user's cache folder (``cache.user_cache_dir``), under a
name keyed by the Python version, the standard library's path and the cap, with a small JSON record
beside it (the Python version, the standard library, the file count, the skipped count and the
bytes). From there it is an ordinary text file: ``cache.ensure`` encodes it like any corpus. A
real file called ``python-stdlib`` is written ``./python-stdlib``.
"""
import hashlib
import json
import os
import platform
import sysconfig
from pathlib import Path

from . import cache
from .. import files
from ..errors import UserError

NAME = "python-stdlib"
DEFAULT_MAX_BYTES = 5_000_000  # about 40% of CPython 3.11's standard library without its tests
# Installed packages are not the standard library; the test suites are left out so the text is
# the library's own code (idle_test is IDLE's test suite, inside idlelib).
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
RULES = 1  # bumped when the rule above changes, so that a text built by the old rule is not reused


def is_builtin(path):
    """True for the reserved name python-stdlib (exactly: ./python-stdlib is a file)."""
    return str(path) == NAME


def interpreter():
    return f"{platform.python_implementation()} {platform.python_version()}"


def stdlib_dir():
    """The running interpreter's standard library directory; an error that names what was looked for
    when there is none (an embedded Python keeps it in a zip file, or not at all)."""
    path = sysconfig.get_paths().get("stdlib")
    if not path or not os.path.isdir(path):
        raise UserError(f"data.path={NAME}: this Python ({interpreter()}) has no standard library directory: "
                        f"looked for sysconfig.get_paths()['stdlib'] = {path}; give data.path a text file instead")
    return Path(path)


def source_files(root):
    """The .py files under root, outside EXCLUDED_DIRS, sorted by their path relative to root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
        found += [Path(dirpath, name) for name in filenames if name.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def concatenate(paths, max_bytes):
    """(the corpus as UTF-8 bytes, the number of files in it, the number skipped): each file and a
    newline, up to max_bytes bytes."""
    parts, size, used, skipped = [], 0, 0, 0
    for path in paths:
        try:
            raw = path.read_bytes()
            raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            skipped += 1
            continue
        piece, used = raw + b"\n", used + 1
        if size + len(piece) >= max_bytes:
            # A cut inside a character leaves its first bytes, the only invalid ones: "ignore" drops just those.
            parts.append(piece[:max_bytes - size].decode("utf-8", errors="ignore").encode("utf-8"))
            break
        parts.append(piece)
        size += len(piece)
    return b"".join(parts), used, skipped


def cached_names(root, max_bytes):
    """(the text file, its JSON record) in the user's cache folder, for this interpreter, root and cap."""
    digest = hashlib.sha256(f"{RULES}\n{root}".encode()).hexdigest()[:12]
    stem = f"{NAME}-{platform.python_implementation().lower()}-{platform.python_version()}-{max_bytes}-{digest}"
    base = cache.user_cache_dir()
    return base / f"{stem}.txt", base / f"{stem}.json"


def read_record(text_path, record_path):
    """The record of a text built before, or None when either file is missing or they disagree."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        return record if record["bytes"] == text_path.stat().st_size else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure(max_bytes, log=print, written=None):
    """(the corpus text file, its record): built on first use, then read from the cache folder.
    written: a list that gets the two files' paths when this call writes them (for a run that removes
    them again if it is refused, data.Corpus.discard)."""
    root = stdlib_dir()
    text_path, record_path = cached_names(root, max_bytes)
    record = read_record(text_path, record_path)
    built = record is None
    if built:
        paths = source_files(root)
        if not paths:
            raise UserError(f"data.path={NAME}: no .py files under {root} (sysconfig.get_paths()['stdlib']); "
                            f"give data.path a text file instead")
        blob, used, skipped = concatenate(paths, max_bytes)
        if not blob:
            raise UserError(f"data.path={NAME}: the corpus is empty: data.stdlib_max_bytes={max_bytes}, and {skipped} "
                            f"of the {len(paths)} .py files under {root} are not valid UTF-8 or unreadable")
        record = {"name": NAME, "python": interpreter(), "stdlib": str(root), "max_bytes": max_bytes,
                  "files": used, "skipped": skipped, "bytes": len(blob)}
        with files.could_not_write(text_path):
            text_path.parent.mkdir(parents=True, exist_ok=True)
            files.write_atomic(text_path, blob, mode=0o644)
            files.write_atomic(record_path, json.dumps(record).encode(), mode=0o644)
        if written is not None:
            written += [text_path, record_path]
    log(f"corpus: {describe(record)}; {'written to' if built else 'read from'} {text_path}")
    return text_path, record


def describe(record):
    """One line for a record: the run's log, its config.yaml and the visualizer's page header."""
    return (f"{record['name']}, the .py files of {record['python']}'s standard library ({record['stdlib']}): "
            f"{record['files']:,} files, {record['bytes']:,} bytes (cap {record['max_bytes']:,}), "
            f"{record['skipped']:,} skipped (not valid UTF-8, or unreadable)")


def check_same(recorded, current, doing):
    """Refuse to go on (doing: 'resume', ...) when the run's corpus was built from another standard
    library than this interpreter's: same name, different text."""
    if recorded != current:
        was = describe(recorded) if recorded else "a text file"
        now = describe(current) if current else "a text file"
        raise UserError(f"cannot {doing}: the run was trained on {was}, but here the corpus is {now}")

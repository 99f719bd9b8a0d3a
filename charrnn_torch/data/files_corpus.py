"""A corpus of many files: ``data.path`` as a folder, a glob, or a list of files, folders and globs.
The built-in ``python-stdlib`` (code_corpus.py) is one such set of files, read by the same rules.

The rules, in one place:

- a folder: every file under it, hidden names (``.git``, ``.DS_Store``) left out, folders reached
  through a symbolic link not entered; a glob (``data/*.txt``, ``**/*.md``, where ``**`` spans
  folders): the files it matches, a matched folder taken whole; a list: all of its entries, each a
  file, folder or glob; a path named twice is read once;
- an entry that matches nothing is an error that names it;
- sorted by path, each file's text followed by ``data.separator`` (a newline by default);
- skipped and counted: what is not a regular file (a pipe, a socket, a device), what cannot be
  read, a corpus cache (cache.py's ``.ids`` files), and with ``data.vocab=chars`` a file that is
  not valid UTF-8.

The text is written once, atomically, to the user's cache folder (``cache.user_cache_dir``), under
a name keyed by the entries, the separator and the vocabulary mode, with a JSON record beside it
that holds the listing: every file's path, size, modification time and read permissions, hashed.
When any of them changes the text is rebuilt, and then its encoded cache (cache.py), which is keyed
by the text. Whoever may read every file used may read the text (cache.py's rule for its caches).

What a run records (its log line, config.yaml, its checkpoint's ``data_source``): the number of
files, the bytes of the text, what was skipped, and ``list_sha256``, the sha256 of the lines
``<path>\\t<size>\\n`` of the files used, in order. Modification times are left out of it, so
that a copied corpus resumes; resume refuses a record that differs.
"""
import glob
import hashlib
import json
import os
import stat
from collections import Counter
from pathlib import Path

from . import cache
from .. import files
from ..errors import UserError

NAME = "files"  # a record's name: python-stdlib's records are named python-stdlib
RULES = 1  # bumped when the rules above change, so that a text built by the old rules is not reused
PATTERN_CHARS = "*?["  # what makes a data.path a glob (glob's own rule)
NOT_REGULAR, UNREADABLE, NOT_UTF8, A_CACHE = ("not a regular file", "unreadable", "not valid UTF-8",
                                              "a corpus cache")


def is_file_set(path):
    """Whether data.path names a set of files rather than one text file: a list, a folder, or a
    glob that is not itself the name of a file."""
    if isinstance(path, list):
        return True
    return os.path.isdir(path) or (any(c in path for c in PATTERN_CHARS) and not os.path.lexists(path))


def entries(path):
    return path if isinstance(path, list) else [path]


def spec_text(path):
    """data.path as one line: a list's entries parted by commas."""
    return ", ".join(entries(path))


def _walk(root, unreadable):
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: unreadable.append(e.filename)):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, name) for name in filenames if not name.startswith(".")]
    return found


def _matches(entry, unreadable):
    """The files of one data.path entry; an error naming it when there are none."""
    if os.path.isdir(entry):
        found = _walk(entry, unreadable)
        if not found:
            why = f"cannot list {unreadable[0]}" if unreadable else "hidden files are left out"
            raise UserError(f"data.path: no file in the folder {entry} ({why})")
        return found
    if any(c in entry for c in PATTERN_CHARS) and not os.path.lexists(entry):
        found = []
        for match in glob.glob(entry, recursive=True):
            found += _walk(match, unreadable) if os.path.isdir(match) else [Path(match)]
        if not found:
            raise UserError(f"data.path: no file matches {entry}")
        return found
    if not os.path.lexists(entry):
        raise UserError(f"data file not found: {entry} (an entry of data.path)")
    return [Path(entry)]


def list_files(path):
    """The files data.path names, sorted by path, each once, and any folder under it that could not
    be listed (to be counted as unreadable)."""
    unreadable, found = [], {}
    for entry in entries(path):
        for p in _matches(entry, unreadable) + [Path(u) for u in unreadable]:
            found.setdefault(p.as_posix(), p)
    own = cache.user_cache_dir().resolve()  # the texts joined here: a glob over it would read them again
    return [found[k] for k in sorted(found) if not found[k].resolve().is_relative_to(own)]


def label_of(path, root=None):
    """A file's path as recorded: relative to root when there is one (python-stdlib's library)."""
    return (path.relative_to(root) if root else path).as_posix()


def listing_hash(paths, root=None):
    """The cache's key for the files as they are now: each one's path, size, modification time and
    read permissions (the text's own follow them), or its kind, or that it cannot be reached."""
    digest = hashlib.sha256(f"{RULES}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            what = (f"{st.st_size}\t{st.st_mtime_ns}\t{st.st_mode & 0o444:o}" if stat.S_ISREG(st.st_mode)
                    else f"mode {st.st_mode:o}")
        except OSError as e:
            what = f"error {e.errno}"
        digest.update(f"{label_of(p, root)}\t{what}\n".encode())
    return digest.hexdigest()


def _read(path, chars):
    """(the file's bytes, its mode), or (None, why it is skipped). Never opens what is not a
    regular file: a pipe would wait for a writer, a device might never end."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            return None, UNREADABLE if stat.S_ISDIR(mode) else NOT_REGULAR  # a folder: one that could not be listed
        raw = Path(path).read_bytes()
    except OSError:
        return None, UNREADABLE
    if raw.startswith(cache.MAGIC):
        return None, A_CACHE
    if chars:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, NOT_UTF8
    return raw, mode


def concatenate(paths, out, mode, separator, max_bytes=None, root=None):
    """Write each usable file of paths and the separator to out (a binary file), up to max_bytes
    bytes if given (cut on a whole character in chars mode; files after the cut are not read).
    Returns (bytes written, [(label, size)] of the files used, Counter of why others were skipped,
    the read permissions every file used grants: those of the text)."""
    sep, size, used, skipped, readable = separator.encode("utf-8"), 0, [], Counter(), 0o444
    for path in paths:
        raw, why_or_mode = _read(path, mode == "chars")
        if raw is None:
            skipped[why_or_mode] += 1
            continue
        used.append((label_of(path, root), len(raw)))
        readable &= why_or_mode
        piece = raw + sep
        if max_bytes is not None and size + len(piece) >= max_bytes:
            piece = piece[:max_bytes - size]
            if mode == "chars":  # a cut inside a character leaves its first bytes: "ignore" drops just those
                piece = piece.decode("utf-8", errors="ignore").encode("utf-8")
            out.write(piece)
            return size + len(piece), used, skipped, readable
        out.write(piece)
        size += len(piece)
    return size, used, skipped, readable


def list_sha256(used):
    return hashlib.sha256("".join(f"{label}\t{n}\n" for label, n in used).encode()).hexdigest()


def read_record(text_path, record_path, listing):
    """The record of a text built before from the files as they are now, or None (missing, built
    from other files, or the text and its record disagree)."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        ok = record.pop("listing") == listing and record["bytes"] == text_path.stat().st_size
        return record if ok else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def build_text(paths, names, listing, base, mode, separator, what, max_bytes=None, root=None):
    """Write the text of paths and its record (base, the counts, and listing for the next run's
    check) to names (text, record); returns the record. what: how messages name the corpus."""
    text_path, record_path = names
    with files.could_not_write(text_path):
        text_path.parent.mkdir(parents=True, exist_ok=True)
        files.remove_abandoned(text_path)
        with files.temp_file(text_path) as (f, tmp):  # private until its mode is known
            size, used, skipped, readable = concatenate(paths, f, mode, separator, max_bytes, root)
            check_usable(what, len(paths), used, skipped, mode)
        os.chmod(tmp, readable | 0o200)  # whoever may read every file may read their text (cache.readable_like)
        files.install(tmp, text_path)
        record = {**base, "separator": separator, "files": len(used), "skipped": sum(skipped.values()),
                  "skipped_by": dict(sorted(skipped.items())), "bytes": size, "list_sha256": list_sha256(used)}
        files.write_atomic(record_path, json.dumps({**record, "listing": listing}).encode(), mode=readable | 0o200)
    return record


def check_usable(what, n, used, skipped, mode):
    """Refuse a set of files with nothing to train on."""
    why = ", ".join(f"{k} {reason}" for reason, k in sorted(skipped.items()))
    if not used:
        hint = "; to train on files that are not UTF-8, set data.vocab=bytes" if skipped[NOT_UTF8] else ""
        raise UserError(f"{what}: none of its {plural(n, 'file')} can be used ({why}){hint}")
    if not sum(size for _, size in used):
        raise UserError(f"{what}: every file it can use is empty ({plural(len(used), 'file')})")


def ensure_text(paths, names, base, mode, separator, what, max_bytes=None, root=None):
    """(the text file, its record, whether it was built now): read from the cache folder when it
    was built from the files as they are now, else built."""
    listing = listing_hash(paths, root)
    record = read_record(*names, listing)
    if record is not None:
        return names[0], record, False
    return names[0], build_text(paths, names, listing, base, mode, separator, what, max_bytes, root), True


def cached_names(stem, key):
    """(the text file, its JSON record) in the user's cache folder: stem, then a hash of key."""
    digest = hashlib.sha256(f"{RULES}\n{key}".encode()).hexdigest()[:16]
    base = cache.user_cache_dir()
    return base / f"{stem}-{digest}.txt", base / f"{stem}-{digest}.json"


def ensure(path, mode="chars", separator="\n", log=print, written=None):
    """(the text file of data.path's files, the run's record): built on first use and whenever a
    file changes, else read from the cache folder. written: as code_corpus.ensure's."""
    paths = list_files(path)
    key = json.dumps([[os.path.abspath(e) for e in entries(path)], mode, separator])
    names = cached_names(NAME, key)
    text_path, record, built = ensure_text(paths, names, {"name": NAME, "path": path}, mode, separator,
                                           f"data.path={spec_text(path)}")
    if built and written is not None:
        written += list(names)
    log(f"corpus: {describe(record)}; {'written to' if built else 'read from'} {text_path}")
    return text_path, record


def plural(n, word):
    return f"{n:,} {word}{'s' * (n != 1)}"


def counts(record, cap=""):
    """The numbers of a record, as the log, config.yaml and the visualizer's header show them."""
    head = f"{plural(record['files'], 'file')}, {record['bytes']:,} bytes{cap}"
    if "list_sha256" not in record:  # python-stdlib's records before file sets
        return f"{head}, {record['skipped']:,} skipped (not valid UTF-8, or unreadable)"
    why = ", ".join(f"{k:,} {reason}" for reason, k in record["skipped_by"].items())
    return f"{head}, list sha256 {record['list_sha256'][:12]}, {record['skipped']:,} skipped{f' ({why})' if why else ''}"


def describe(record):
    """One line for a file set's record."""
    sep = "" if record["separator"] == "\n" else f", separator {record['separator']!r}"
    return f"the files of {spec_text(record['path'])}{sep}: {counts(record)}"


def same(recorded, current):
    """Whether a run's recorded corpus is the one here: every key it recorded agrees (a record
    from before a key existed is compared on those it has)."""
    if recorded is None or current is None:
        return recorded is current
    return all(current.get(k) == v for k, v in recorded.items())

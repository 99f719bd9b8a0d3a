"""The encoded corpus: the text's ids written once to a file and memory-mapped from then on.

Like nanoGPT's ``train.bin`` and char-rnn's ``data.t7``: the first run on a text encodes it in a
streaming pass (memory bounded by the chunk and the vocabulary, never the corpus) into a cache
file next to it; every later run, and every DDP rank, maps that file, so the ids live once in the
page cache instead of once per process as Python objects.

The file is a header and the ids:

    MAGIC (12 bytes) | header length (8 bytes, little-endian) | header (JSON) | zero padding to 64 | ids

The header records the vocabulary and each symbol's count, the number of ids, their dtype (the
smallest of uint8, uint16, uint32 that fits) and what the cache was built from (the source's
path, size, mtime and a hash of its first and last MiB). A cache whose source has changed is
rebuilt. It is written to a temporary name and renamed into place when complete, so a build that
is killed is never mistaken for a finished one; the next start removes what a killed build left.

The cache is readable by whoever can read its source. One that cannot be read (another user's,
private to them) is left alone and another place is used: the user's own cache folder. A cache
whose ids do not fit its vocabulary is refused when it is opened. Where no place can be written at
all, the run encodes the corpus in memory and says so in one line (load).
"""
import codecs
import hashlib
import json
import os
import struct
import time
from pathlib import Path

import numpy as np

from .. import files
from ..errors import RunFailed, UserError
from ..files import temp_file
from .vocab import MODES

MAGIC = b"CHARRNN-IDS\n"
VERSION = 1
SUFFIX = ".ids"  # the cache of corpus.txt in chars mode is corpus.txt.chars.ids
CHUNK = 2 << 20  # bytes read at a time while building; the transient memory is a small multiple of it
ENDS = 1 << 20  # bytes hashed at each end of the source for its fingerprint
ALIGN = 64
MAX_CODEPOINT = 0x110000


def smallest_dtype(vocab_size):
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise UserError(f"a vocabulary of {vocab_size} symbols does not fit uint32")


def fingerprint(path):
    """What identifies the source's content cheaply: size, mtime and a hash of both ends."""
    st = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(ENDS))
        if st.st_size > ENDS:
            f.seek(max(ENDS, st.st_size - ENDS))
            digest.update(f.read(ENDS))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_ends": digest.hexdigest()}


def user_cache_dir():
    """The user's cache folder for this project: $XDG_CACHE_HOME/charrnn_torch, else ~/.cache/charrnn_torch."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "charrnn_torch"


def cache_places(source, mode):
    """Where the cache of source may live, in the order tried: beside it (shared by everyone who
    reads the source), then in the user's own cache folder (a source folder one cannot write)."""
    source = Path(source)
    beside = source.with_name(f"{source.name}.{mode}{SUFFIX}")
    key = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    return [beside, user_cache_dir() / f"{key}-{beside.name}"]


def readable_like(source):
    """A cache's mode: whoever may read the source may read its cache (which tells them nothing
    the source does not), and its owner may write it."""
    return (os.stat(source).st_mode & 0o444) | 0o200


def _chunks(path, progress, desc):
    from tqdm import tqdm

    size = os.path.getsize(path)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=not progress,
                                     leave=False) as bar:
        offset = 0
        while chunk := f.read(CHUNK):
            yield offset, chunk
            offset += len(chunk)
            bar.update(len(chunk))


def _codepoints(path, progress, desc):
    """The source decoded as UTF-8, chunk by chunk: yields each chunk's code points as uint32.
    Invalid UTF-8 is an error that names the byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    for offset, chunk in _chunks(path, progress, desc):
        pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as e:
            raise UserError(f"data file {path} is not valid UTF-8 (bad byte at offset {offset - pending + e.start}); "
                            f"to model its raw bytes, set data.vocab=bytes") from None
        yield np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        size = os.path.getsize(path)
        raise UserError(f"data file {path} is not valid UTF-8 (it ends inside a character, at offset "
                        f"{size - len(decoder.getstate()[0])}); to model its raw bytes, set data.vocab=bytes") from None


def _count_symbols(path, mode, progress):
    """Pass 1: (the sorted vocabulary as code points or byte values, each one's count)."""
    if mode == "bytes":
        counts = np.zeros(256, dtype=np.int64)
        for _, chunk in _chunks(path, progress, "counting bytes"):
            counts += np.bincount(np.frombuffer(chunk, dtype=np.uint8), minlength=256)
        return np.arange(256), counts  # every byte is in the vocabulary, seen or not
    counts = np.zeros(MAX_CODEPOINT, dtype=np.int64)
    for cps in _codepoints(path, progress, "counting characters"):
        counts += np.bincount(cps, minlength=MAX_CODEPOINT)
    symbols = np.flatnonzero(counts)
    return symbols, counts[symbols]


def encoded_chunks(path, mode, symbols, dtype, progress):
    """Pass 2: the ids of each chunk, in dtype."""
    if mode == "bytes":
        for _, chunk in _chunks(path, progress, "encoding"):
            yield np.frombuffer(chunk, dtype=np.uint8)
        return
    table = np.zeros(MAX_CODEPOINT, dtype=dtype)
    table[symbols] = np.arange(len(symbols), dtype=dtype)
    for cps in _codepoints(path, progress, "encoding"):
        yield table[cps]


def _header_bytes(header):
    blob = json.dumps(header, ensure_ascii=True).encode()
    head = MAGIC + struct.pack("<Q", len(blob)) + blob
    return head + b"\0" * (-len(head) % ALIGN)


def describe(source, mode, progress=True):
    """Pass 1 over source: (the cache's header, the symbols, their dtype, the source's fingerprint
    before reading)."""
    fp = fingerprint(source)
    symbols, counts = _count_symbols(source, mode, progress)
    if len(symbols) == 0:
        raise UserError(f"data file {source} is empty")
    dtype = smallest_dtype(len(symbols))
    header = {"version": VERSION, "vocab_mode": mode, "length": int(counts.sum()), "dtype": dtype.name,
              "vocab": [chr(int(c)) for c in symbols] if mode == "chars" else None,
              "counts": counts.tolist(), "source": {"path": str(Path(source).resolve()), **fp}}
    return header, symbols, dtype, fp


def _check_unchanged(source, fp):
    if fingerprint(source) != fp:
        raise UserError(f"data file {source} changed while it was being encoded; run again")


def build(source, dest, mode, progress=True, install=True):
    """Encode source into the cache file dest. It is written under a temporary name beside dest and
    renamed into place when complete; with install=False it is left under that name for the caller
    to install() or discard() once the run has passed its checks. Returns (path, header). An
    OSError means dest's place cannot be written (the temporary file is made first, so that is
    known before any pass over the source)."""
    source, dest = Path(source), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with temp_file(dest, mode=readable_like(source)) as (f, tmp):
        header, symbols, dtype, fp = describe(source, mode, progress)
        f.write(_header_bytes(header))
        for ids in encoded_chunks(source, mode, symbols, dtype, progress):
            f.write(ids.tobytes())
        _check_unchanged(source, fp)  # inside the block: a failure removes the temporary file
    if install:
        files.install(tmp, dest)
        return dest, read_header(dest)
    return tmp, read_header(tmp)


def write(dest, header, ids, source, install=True):
    """A cache file of ids encoded elsewhere (token_cache.py's), written as build() writes one: under
    a temporary name, then installed (install=False: left for the caller). Returns (path, header)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with temp_file(dest, mode=readable_like(source)) as (f, tmp):
        f.write(_header_bytes(header))
        f.write(ids.tobytes())
    if install:
        files.install(tmp, dest)
        return dest, read_header(dest)
    return tmp, read_header(tmp)


def encode_in_memory(source, mode, progress=True):
    """(ids, header): source encoded into an array, for a run that has nowhere to write its cache."""
    header, symbols, dtype, fp = describe(source, mode, progress)
    ids, at = np.empty(header["length"], dtype=dtype), 0
    for chunk in encoded_chunks(source, mode, symbols, dtype, progress):
        ids[at:at + len(chunk)] = chunk
        at += len(chunk)
    _check_unchanged(source, fp)
    return ids, header


def read_header(path):
    """The header of a cache file, checked against the file: a wrong magic, an unreadable header
    or a file shorter or longer than its header says is an error."""
    path = Path(path)
    fix = f"delete {path} to have it rebuilt from its source"
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 8)
        if len(head) < len(MAGIC) + 8 or head[:len(MAGIC)] != MAGIC:
            raise UserError(f"{path} is not a charrnn_torch corpus cache (its header does not match); {fix}")
        (n,) = struct.unpack("<Q", head[len(MAGIC):])
        try:
            header = json.loads(f.read(n))
            offset = -(-(len(MAGIC) + 8 + n) // ALIGN) * ALIGN
            itemsize = np.dtype(header["dtype"]).itemsize
            ok = (header["version"] == VERSION and header["vocab_mode"] in MODES
                  and header["dtype"] in ("uint8", "uint16", "uint32") and len(header["counts"]) > 0
                  and sum(header["counts"]) == header["length"])
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise UserError(f"{path} has a corrupt or foreign header (its header does not match); {fix}")
    expected = offset + header["length"] * itemsize
    actual = os.path.getsize(path)
    if actual != expected:
        raise UserError(f"{path} is truncated or damaged: {actual:,} bytes where its header promises "
                        f"{expected:,}; {fix}")
    header["offset"] = offset
    return header


def is_stale(header):
    """True when the cache's source still exists and is no longer what the cache was built from."""
    src = header["source"]
    try:
        return fingerprint(src["path"]) != {k: src[k] for k in ("size", "mtime_ns", "sha256_ends")}
    except OSError:
        return False  # the source is gone: the cache stands on its own


def open_ids(path, header):
    """The ids as a read-only-in-practice memory map (copy-on-write: nothing ever writes it)."""
    return np.memmap(path, dtype=np.dtype(header["dtype"]), mode="c", offset=header["offset"],
                     shape=(header["length"],))


def check_ids(path, header, chunk=CHUNK * 32):
    """Refuse a cache whose ids do not fit its vocabulary: a header intact over damaged ids would
    otherwise fail mid-run, at the first batch that reads one. One vectorised pass over the map."""
    size = len(header["counts"])
    if size > np.iinfo(np.dtype(header["dtype"])).max:
        return  # every value of the dtype is an id (bytes mode: 256 symbols in uint8)
    ids = open_ids(path, header)
    top = max(int(ids[i:i + chunk].max()) for i in range(0, len(ids), chunk))
    if top >= size:
        raise UserError(f"{path} is corrupt: it holds id {top} where its vocabulary has {size} symbols; "
                        f"delete {path} to have it rebuilt from its source")


def is_cache_file(path):
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


class NoCachePlace(RunFailed):
    """No place for the cache could be read or written (the message says why, for each)."""


def ensure(source, mode, progress=True, log=print, install=True):
    """(path, header, pending): the cache of source in mode, built or rebuilt as needed, beside the
    source or else in the user's cache folder (cache_places). A source that is itself a cache file
    is used as it is, and refused if its own source has since changed. pending is None, or, for a
    cache just built with install=False, (its temporary path, where it belongs), for install() or
    discard(). NoCachePlace when no place could be read or written; load() then encodes in memory."""
    source = Path(source)
    if _given_a_cache(source):
        header = read_header(source)
        if header["vocab_mode"] != mode:
            raise UserError(f"{source} is a cache of data.vocab={header['vocab_mode']}, not {mode}")
        if is_stale(header):
            raise UserError(f"{source} is stale: its source {header['source']['path']} has changed since it was "
                            f"built; train from the source to rebuild it")
        check_ids(source, header)
        return source, header, None
    problems, writable, stale = [], [], set()
    for dest in cache_places(source, mode):
        files.remove_abandoned(dest)
        try:
            header = _current(dest, source, mode)
        except OSError as e:  # never replaced: it may be someone else's, private to them
            problems.append(f"cannot read {dest} ({e.strerror or e})")
            continue
        if header is not None:
            if problems:
                log(f"{'; '.join(problems)}: using {dest}")
            return dest, header, None
        writable.append(dest)
        if dest.exists():
            stale.add(dest)
    return _build_somewhere(source, mode, writable, stale, problems, progress, log, install)


def _given_a_cache(source):
    """Whether data.path names a cache file itself; refuses what is not a readable regular file."""
    if source.is_dir():
        raise UserError(f"data path is a directory, not a text file: {source}")
    files.check_regular(source, "data file", "zcat corpus.gz > corpus.txt")
    try:
        return is_cache_file(source)
    except OSError as e:
        raise UserError(f"cannot read data file {source}: {e.strerror}") from None


def _current(dest, source, mode):
    """dest's header if it is a finished cache of source, as it is now, in mode (its ids checked);
    None if it is missing or stale. OSError: it cannot be read."""
    if not dest.exists():
        return None
    header = read_header(dest)
    if header["vocab_mode"] != mode or is_stale(header) or header["source"]["path"] != str(source.resolve()):
        return None
    check_ids(dest, header)
    return header


def _build_somewhere(source, mode, places, stale, problems, progress, log, install):
    """Build the cache at the first of places that can be written; NoCachePlace if none can."""
    for dest in places:
        if dest in stale:
            log(f"rebuilding {dest}: {source} has changed since it was encoded")
        tic = time.perf_counter()
        try:
            path, header = build(source, dest, mode, progress, install)
        except OSError as e:
            problems.append(f"cannot write {dest} ({e.strerror or e})")
            continue
        secs, size = time.perf_counter() - tic, os.path.getsize(source)
        if problems:
            log(f"{'; '.join(problems)}: using {dest}")
        # A speed means something only where the encoding, not the start-up around it, takes the time.
        speed = f" ({size / 1e6 / secs:.0f} MB/s)" if size >= 10**7 else ""
        shown = f"{size / 1e6:.1f} MB" if size >= 10**6 else f"{size:,} bytes"
        log(f"encoded {source} ({shown}) into {dest} in {secs:.2f} s{speed}")
        return path, header, (None if install else (path, dest))
    raise NoCachePlace("; ".join(problems))


def load(source, mode, progress=True, log=print, install=True):
    """(ids, header, pending): the corpus's ids, memory-mapped from its cache (see ensure). Where no
    cache can be read or written anywhere (read-only folders, as in some containers), the source is
    encoded in memory for this run instead, and a line says so."""
    try:
        path, header, pending = ensure(source, mode, progress, log, install)
    except NoCachePlace as e:
        log(f"no place for the corpus cache of {source} ({e}); encoding it in memory for this run")
        ids, header = encode_in_memory(source, mode, progress)
        return ids, header, None
    return open_ids(path, header), header, pending

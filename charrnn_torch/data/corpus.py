"""The corpus: fetching it once, reading it, and the run's corpus as ids (load_corpus, Corpus)."""
import contextlib
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from . import cache as cache_mod, code_corpus, files_corpus, token_cache, tokens
from .. import files
from ..errors import UserError, one_line
from .vocab import Vocab, vocab_of

DEFAULT_PATH = "data/tinyshakespeare.txt"
CORPUS_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def download(url, dest, sha256, timeout=30, progress=True):
    """Fetch url to dest through a temp file in dest's directory; keep it only if sha256 matches."""
    dest = Path(dest)
    where = f"fetch it yourself and save it as {dest.resolve()}"
    made = [d for d in dest.parents if not d.exists()]  # nearest first: removed again if the fetch fails
    dest.parent.mkdir(parents=True, exist_ok=True)
    files.remove_abandoned(dest, suffix=".part")  # a download killed half way
    try:
        return _fetch(url, dest, sha256, timeout, progress, where)
    except BaseException:
        for d in made:  # a failed first run leaves no empty data/ in the folder it ran from
            try:
                d.rmdir()
            except OSError:
                break
        raise


def _fetch(url, dest, sha256, timeout, progress, where):
    from tqdm import tqdm

    digest = hashlib.sha256()
    try:
        with files.temp_file(dest, suffix=".part") as (f, tmp), \
                urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"fetching {dest.name}",
                      disable=not progress) as bar:
                while chunk := resp.read(1 << 16):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if digest.hexdigest() != sha256:
                raise UserError(f"downloaded {url} but its sha256 is {digest.hexdigest()}, expected {sha256}; "
                                f"{where}")
        files.install(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(f"cannot download {url} ({one_line(e)}); {where}") from None
    return dest


def ensure_corpus(path, default_path=DEFAULT_PATH, url=CORPUS_URL, sha256=CORPUS_SHA256, progress=True):
    """Return path; the default corpus is fetched on first use, any other path must exist."""
    path = Path(path)
    if path.exists():
        return path
    if os.path.normpath(str(path)) == os.path.normpath(default_path) or path.resolve() == Path(default_path).resolve():
        return download(url, path, sha256, progress=progress)
    raise UserError(f"data file not found: {path}")


def corpus_source(data_cfg, progress=True, log=print, written=None):
    """(the text file a data config names, its record): python-stdlib and a set of files (a
    folder, a glob, a list) are joined into one text file on first use and come with their record
    (code_corpus.ensure, files_corpus.ensure; written: see there); one text file comes with None
    (the default one is fetched on first use)."""
    if code_corpus.is_builtin(data_cfg.path):
        return code_corpus.ensure(data_cfg.stdlib_max_bytes, log, data_cfg.vocab, data_cfg.separator, written)
    if files_corpus.is_file_set(data_cfg.path):
        return files_corpus.ensure(data_cfg.path, data_cfg.vocab, data_cfg.separator, log, written)
    return ensure_corpus(data_cfg.path, progress=progress), None


def names_one_file(path):
    """Whether data.path is one text file (not python-stdlib, not a set of files)."""
    return not code_corpus.is_builtin(path) and not files_corpus.is_file_set(path)


def describe_source(record):
    """One line for what a run's corpus was joined from (its record), for the log, config.yaml and
    the visualizer's header."""
    return (code_corpus.describe if record["name"] == code_corpus.NAME else files_corpus.describe)(record)


def check_same_source(recorded, current, doing):
    """Refuse to go on (doing: 'resume', ...) when the run's corpus was joined from other files than
    the corpus here (another standard library, files added, removed or resized): same data.path,
    different text."""
    if not files_corpus.same(recorded, current):
        was = describe_source(recorded) if recorded else "a text file"
        now = describe_source(current) if current else "a text file"
        raise UserError(f"cannot {doing}: the run was trained on {was}, but here the corpus is {now}")


def read_corpus(path, mode="chars"):
    """A text file, read whole: as text (UTF-8), or with mode="bytes" as its raw bytes, as a
    data.vocab=bytes model reads what it trained on."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"data path is a directory, not a text file: {path}")
    files.check_regular(path, "data file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read data file {path}: {e.strerror}") from None
    if not raw:
        raise UserError(f"data file {path} is empty")
    if mode == "bytes":
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data file {path} is not valid UTF-8 (bad byte at offset {e.start})") from None


EXTRA_SHOWN = 40  # new characters named in the fine-tuning notice; a larger alphabet is counted, not listed


def split(ids, val_fraction, n_train=None):
    """A contiguous split: the first (1 - val_fraction) for training, the rest for validation
    (n_train: where a token corpus's splits meet, token_cache.py)."""
    n_val = int(len(ids) * val_fraction) if n_train is None else len(ids) - n_train
    return ids[: len(ids) - n_val], ids[len(ids) - n_val:]


class Corpus:
    """The run's text as ids: a memory map of the encoded cache (cache.py; an array encoded in
    memory where no cache can be written), with the splits as views of it, never copies. Under DDP
    every rank maps the same file (training.distributed.load_corpus), so they share one copy of it
    in the page cache.

    base_vocab (fine-tuning, and resuming a fine-tuned run): the characters of the checkpoint the
    run starts from. The run's vocabulary is then those, in their order, followed by the corpus's
    characters they lack, and lut maps the cache's ids to the run's.

    source_info: what a corpus of many files was joined from (files_corpus's record), else None.
    train_chars, val_lens: for bits per character, a token corpus's training characters and the
    characters each validation id spells (token_cache.char_counts); None for chars and bytes.
    """

    def __init__(self, data_cfg, progress=True, base_vocab=None, log=print, defer_install=False):
        # defer_install: a new cache stays under a temporary name until the run has passed its
        # checks (keep()), and a python-stdlib text built now is removed if it does not (discard()),
        # so that a run refused for bad input leaves nothing behind.
        self.pending, self.built = None, [] if defer_install else None
        source, self.source_info = corpus_source(data_cfg, progress, log, self.built)
        try:
            if data_cfg.vocab in tokens.MODES:
                ids, header, self.pending = token_cache.load(source, data_cfg, read_corpus, progress, log,
                                                             install=not defer_install)
            else:
                ids, header, self.pending = cache_mod.load(source, data_cfg.vocab, progress, log,
                                                           install=not defer_install)
        except BaseException:
            self.discard()
            raise
        ids = torch.from_numpy(ids)
        corpus_vocab = vocab_of(data_cfg.vocab, header["vocab"], header.get("tokens", {}).get("tokenizer"))
        self.vocab, self.lut, self.char_counts = corpus_vocab, None, header["counts"]
        if base_vocab is not None and data_cfg.vocab == "chars":
            self.extend(base_vocab, corpus_vocab, header["counts"], log)
        self.train_ids, self.val_ids = split(ids, data_cfg.val_fraction, token_cache.train_length(header))
        self.train_chars, self.val_lens = token_cache.char_counts(header, self.vocab, self.val_ids)

    def extend(self, base_vocab, corpus_vocab, counts, log):
        """The run's vocabulary: base_vocab's characters, in their order, then the corpus's others
        (said in one line: the model grows a column for each)."""
        extra = [c for c in corpus_vocab.chars if c not in set(base_vocab)]
        if extra:
            shown = ", ".join(repr(c) for c in extra[:EXTRA_SHOWN])
            more = f" and {len(extra) - EXTRA_SHOWN} more" if len(extra) > EXTRA_SHOWN else ""
            log(f"vocabulary extended by {len(extra)} character{'s' * (len(extra) != 1)}: {shown}{more}")
        self.vocab = Vocab(list(base_vocab) + extra)
        order = [self.vocab.stoi[c] for c in corpus_vocab.chars]
        if order != list(range(len(order))):
            self.lut = torch.tensor(order, dtype=torch.long)
        self.char_counts = [0] * len(self.vocab)
        for c, n in zip(corpus_vocab.chars, counts):
            self.char_counts[self.vocab.stoi[c]] = n

    @contextlib.contextmanager
    def installed_if_no_error(self):
        """A cache built by this run is installed if the block passes (the run's checks), else removed."""
        try:
            yield self
        except BaseException:
            self.discard()
            raise
        self.keep()

    def keep(self):
        """Install a cache built by this run in its place (the run passed its checks)."""
        if self.pending:
            files.install(*self.pending)
            self.pending = None
        self.built = None

    def discard(self):
        """Remove what this run built for its corpus: its cache, and a python-stdlib text and record."""
        if self.pending:
            files.discard(self.pending[0])
            self.pending = None
        for path in self.built or []:
            files.discard(path)
        self.built = None


def load_corpus(data_cfg, progress=True, base_vocab=None, log=print, defer_install=False):
    """The corpus of a config's data section, as ids: fetched on first use if it is the default
    one, encoded into its cache if needed, and split. See Corpus."""
    return Corpus(data_cfg, progress, base_vocab, log, defer_install)



"""The corpus: fetching it once, reading it, the vocabulary, and the two batchers."""
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch

from .errors import UserError

DEFAULT_PATH = "data/tinyshakespeare.txt"
CORPUS_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def download(url, dest, sha256, timeout=30, progress=True):
    """Fetch url to dest through a temp file in dest's directory; keep it only if sha256 matches."""
    from tqdm import tqdm

    dest = Path(dest)
    where = f"download it from {url} and save it as {dest.resolve()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"fetching {dest.name}",
                      disable=not progress) as bar:
                while chunk := resp.read(1 << 16):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if digest.hexdigest() != sha256:
            raise UserError(f"downloaded {url} but its sha256 is {digest.hexdigest()}, expected {sha256}; "
                            f"{where}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(f"cannot download {url} ({' '.join(str(e).split())}); {where}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def ensure_corpus(path, default_path=DEFAULT_PATH, url=CORPUS_URL, sha256=CORPUS_SHA256, progress=True):
    """Return path; the default corpus is fetched on first use, any other path must exist."""
    path = Path(path)
    if path.exists():
        return path
    if os.path.normpath(str(path)) == os.path.normpath(default_path) or path.resolve() == Path(default_path).resolve():
        return download(url, path, sha256, progress=progress)
    raise UserError(f"data file not found: {path}")


def read_corpus(path):
    path = Path(path)
    if path.is_dir():
        raise UserError(f"data path is a directory, not a text file: {path}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read data file {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data file {path} is not valid UTF-8 (bad byte at offset {e.start})") from None
    if not text:
        raise UserError(f"data file {path} is empty")
    return text


class Vocab:
    """Characters <-> ids. Sorted, so the same text always gives the same ids."""

    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.chars)

    def __contains__(self, ch):
        return ch in self.stoi

    def unknown(self, text):
        return sorted(set(text) - set(self.stoi))

    def encode(self, text):
        return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def split(ids, val_fraction):
    """A contiguous split: the first (1 - val_fraction) for training, the rest for validation."""
    n_val = int(len(ids) * val_fraction)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val:]


def batchify(ids, num_streams):
    """Lay the text out as num_streams contiguous streams: (N,) -> (num_streams, N // num_streams).

    Stream b is the b-th contiguous slice of the text, so step i's window in
    stream b follows step i-1's window in the same stream, and the hidden state
    can be carried across them. The tail that does not fill a row is dropped.
    """
    n = len(ids) // num_streams
    return ids[: n * num_streams].view(num_streams, n)


class StreamBatcher:
    """Stateful truncated-BPTT batches: the next seq_len characters of every stream.

    Under DDP each rank takes its own rows of the same global layout, so the
    streams, and the hidden state that follows them, are the ones a single
    process with the global batch would see.
    """

    def __init__(self, ids, batch_size, seq_len, rank=0, world_size=1):
        self.streams = batchify(ids, batch_size)  # (B, N // B)
        self.seq_len = seq_len
        self.steps_per_epoch = (self.streams.shape[1] - 1) // seq_len
        if self.steps_per_epoch < 1:
            raise UserError(f"training text is too short: {len(ids)} characters do not fill one batch of "
                            f"{batch_size} streams x {seq_len + 1} characters; lower train.batch_size or "
                            f"train.seq_len")
        per_rank = batch_size // world_size
        self.local = self.streams[rank * per_rank:(rank + 1) * per_rank]
        self.pos = 0  # window index within the epoch
        self.epoch = 0

    def next(self):
        """Returns (x, y, reset): x, y (B_local, T); reset means the streams wrapped, so drop the state."""
        reset = self.pos == 0
        i = self.pos * self.seq_len
        x = self.local[:, i:i + self.seq_len]
        y = self.local[:, i + 1:i + 1 + self.seq_len]  # targets: the same streams shifted by one
        self.pos += 1
        if self.pos == self.steps_per_epoch:
            self.pos, self.epoch = 0, self.epoch + 1
        return x, y, reset

    def state_dict(self):
        return {"pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.pos, self.epoch = int(state["pos"]), int(state["epoch"])


class RandomWindowBatcher:
    """nanoGPT-style: B windows at random offsets, each starting from h0 = 0."""

    def __init__(self, ids, batch_size, seq_len, seed, rank=0, world_size=1):
        if len(ids) < seq_len + 2:
            raise UserError(f"training text is too short: {len(ids)} characters for train.seq_len={seq_len}")
        self.ids = ids
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.per_rank = batch_size // world_size
        self.rank = rank
        # Its own generator: the windows do not depend on how much else drew random numbers.
        self.generator = torch.Generator().manual_seed(seed)

    def next(self):
        # Every rank draws the global batch and keeps its rows, so DDP sees a single run's windows.
        starts = torch.randint(len(self.ids) - self.seq_len - 1, (self.batch_size,), generator=self.generator)
        starts = starts[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        offsets = torch.arange(self.seq_len)
        x = self.ids[starts[:, None] + offsets]
        y = self.ids[starts[:, None] + offsets + 1]
        return x, y, True

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def eval_windows(ids, num_streams, seq_len, rank=0, world_size=1):
    """Validation windows: every character of the split (bar a < B tail), in order, state carried.

    Yields (x, y) of shape (B_local, <= seq_len); the last window may be shorter
    so that no character goes unscored.
    """
    streams = batchify(ids, num_streams)
    per_rank = num_streams // world_size
    local = streams[rank * per_rank:(rank + 1) * per_rank]
    n = local.shape[1]
    for i in range(0, n - 1, seq_len):
        t = min(seq_len, n - 1 - i)
        yield local[:, i:i + t], local[:, i + 1:i + 1 + t]

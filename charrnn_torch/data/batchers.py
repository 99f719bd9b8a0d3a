"""The batchers: a corpus's ids cut into the windows training and evaluation read."""
import torch

from ..errors import UserError
from .vocab import as_ids


def make_batcher(train_ids, train_cfg, dist_info, lut=None):
    """The stream batcher (train.stateful) or the random-window one, for this rank."""
    if train_cfg.batch_size % dist_info.world_size:
        raise UserError(f"train.batch_size={train_cfg.batch_size} must be divisible by the number of processes "
                        f"({dist_info.world_size})")
    if train_cfg.stateful:
        return StreamBatcher(train_ids, train_cfg.batch_size, train_cfg.seq_len, dist_info.rank, dist_info.world_size,
                                      lut)
    return RandomWindowBatcher(train_ids, train_cfg.batch_size, train_cfg.seq_len, train_cfg.seed, dist_info.rank,
                                        dist_info.world_size, lut)



def streams_that_fit(n_train, batch_size, seq_len, world_size):
    """The batch size a stateful run of n_train training characters can have: train.batch_size, or
    fewer streams when the text cannot fill that many windows of seq_len + 1 (a multiple of
    world_size; 0 when not even one stream per process fits)."""
    fit = min(batch_size, n_train // (seq_len + 1))
    return fit // world_size * world_size


def eval_stream_count(n_val, batch_size, seq_len, world_size):
    """As many validation streams as the batch, fewer when the split is short; a multiple of world_size."""
    streams = min(batch_size, max(1, n_val // (seq_len + 1)))
    streams = max(world_size, streams // world_size * world_size)
    if n_val // streams < 2:
        raise UserError(f"validation split is too short: {n_val} characters "
                        f"(data.val_fraction, train.eval_chars) for {streams} stream(s); use a longer corpus, or a "
                        f"larger data.val_fraction or train.eval_chars")
    return streams



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

    def __init__(self, ids, batch_size, seq_len, rank=0, world_size=1, lut=None):
        self.lut = lut
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
        x = as_ids(self.local[:, i:i + self.seq_len], self.lut)
        y = as_ids(self.local[:, i + 1:i + 1 + self.seq_len], self.lut)  # targets: the same streams shifted by one
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

    def __init__(self, ids, batch_size, seq_len, seed, rank=0, world_size=1, lut=None):
        self.lut = lut
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
        x = as_ids(self.ids[starts[:, None] + offsets], self.lut)
        y = as_ids(self.ids[starts[:, None] + offsets + 1], self.lut)
        return x, y, True

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])



def eval_windows(ids, num_streams, seq_len, rank=0, world_size=1, lut=None):
    """Validation windows: every character of the split (bar a < B tail), in order, state carried.

    Yields (x, y) of shape (B_local, <= seq_len); the last window may be shorter
    so that no character goes unscored.
    """
    streams = batchify(ids, num_streams)
    per_rank = num_streams // world_size
    local = streams[rank * per_rank:(rank + 1) * per_rank]
    n = local.shape[1]
    for i in _window_starts(n, seq_len):
        t = min(seq_len, n - 1 - i)
        yield as_ids(local[:, i:i + t], lut), as_ids(local[:, i + 1:i + 1 + t], lut)


def eval_window_count(n_ids, num_streams, seq_len):
    """How many windows eval_windows yields for a split of n_ids characters."""
    return len(_window_starts(n_ids // num_streams, seq_len))


def _window_starts(stream_len, seq_len):
    return range(0, stream_len - 1, seq_len)


"""Repairing text (``charrnn fill``): each mask character replaced by the model's most likely
character at that place.

Gaps are filled most-confident first, each fill conditioning the next: at every round, each window
fills the one gap whose best guess is surest, and the gaps still open hold their current best
guesses as context. A bidirectional model predicts a gap from both sides of it. A left-to-right
model predicts it from its left context, and, with ``rescore`` > 0, reweighs its ``candidates``
best guesses c by the likelihood of the next ``rescore`` characters after c:
p(c | left, right) ∝ p(c | left) · p(x_{i+1..i+rescore} | left, c).

A gap is one character: a gap of unknown length is out of scope. Long texts are filled in windows of
``window`` characters, each window on its own.
"""
from dataclasses import dataclass

import torch

from ..errors import UserError
from .sample import default_prime

WINDOW = 256  # characters filled together; a gap sees no context beyond its window
RESCORE = 8  # a left-to-right model's right context: the characters after a gap it rescores with
CANDIDATES = 8  # the left-context guesses a left-to-right model rescores


@dataclass
class Fill:
    """How to fill: with a left-to-right model, rescore > 0 rescores each gap's candidates by the
    next rescore characters (0: left context only)."""
    rescore: int = RESCORE
    candidates: int = CANDIDATES
    window: int = WINDOW


def gap_positions(vocab, text, mask):
    """The positions of mask in text, checked: a single character, present, and every other character
    of the text in the vocabulary."""
    if not isinstance(mask, str) or len(mask) != 1:
        raise UserError(f"the mask must be a single character, got {mask!r}")
    if vocab.mode != "chars":
        raise UserError(f"fill works on characters: it needs a model trained with data.vocab=chars (this one models "
                        f"{vocab.mode}, and a gap is one character, which none of its symbols need stand for)")
    gaps = [i for i, ch in enumerate(text) if ch == mask]
    if not gaps:
        raise UserError(f"the text has no {mask!r} to fill (the mask character is set by --mask-char)")
    unknown = sorted({ch for ch in text if ch != mask and ch not in vocab.stoi})
    if unknown:
        raise UserError(f"the text has characters outside the model's vocabulary: "
                        f"{', '.join(repr(c) for c in unknown[:10])}")
    return gaps


def fill(model, vocab, text, mask="_", top_k=0, how=Fill(), char_counts=None):
    """{"text": the text with every gap filled, "gaps": [{"position", "char", "prob", "order" (0:
    filled first), "candidates": the top_k [(char, prob)]}] in text order}."""
    gaps = gap_positions(vocab, text, mask)
    placeholder = vocab.stoi[default_prime(vocab, char_counts)]
    ids = torch.tensor([placeholder if ch == mask else vocab.stoi[ch] for ch in text])
    is_gap = torch.zeros(len(text), dtype=torch.bool)
    is_gap[gaps] = True
    W, n_full = how.window, len(text) // how.window
    pieces = [(0, n_full * W, W)] if n_full else []  # the full windows, side by side in one batch
    if len(text) > n_full * W:
        pieces.append((n_full * W, len(text), len(text) - n_full * W))
    device = model.W_hy.device
    parts = []
    for a, b, width in pieces:
        parts.append(fill_windows(model, ids[a:b].view(-1, width).to(device), is_gap[a:b].view(-1, width).to(device),
                                  how, placeholder, top_k))
    filled, prob, order = (torch.cat([p[i].reshape(-1).cpu() for p in parts]) for i in range(3))
    cands = [torch.cat([p[3][i].reshape(-1, p[3][i].shape[-1]) for p in parts]) for i in range(2)]
    chars = [vocab.chars[i] for i in filled.tolist()]
    rank = {p: r for r, p in enumerate(sorted(gaps, key=lambda p: (order[p].item(), p)))}
    return {"text": "".join(chars), "gaps": [
        {"position": p, "char": chars[p], "prob": float(prob[p]), "order": rank[p],
         "candidates": [(vocab.chars[int(c)], float(q)) for c, q in zip(cands[0][p], cands[1][p])][:top_k]}
        for p in gaps]}


@torch.no_grad()
def fill_windows(model, ids, is_gap, how, placeholder, top_k=0):
    """Fill the gaps of N windows at once: ids (N, T) (gaps hold anything), is_gap (N, T). Returns
    (filled ids (N, T), each gap's probability (N, T), the round it was filled in (N, T), its top_k
    candidates as (ids (N, T, k), probs (N, T, k)))."""
    ids, open_ = ids.clone(), is_gap.clone()
    ids[is_gap] = placeholder
    N, T = ids.shape
    prob, order = torch.zeros(N, T, dtype=torch.float64), torch.full((N, T), -1, dtype=torch.long)
    k = max(1, top_k)
    cand_ids, cand_probs = torch.zeros(N, T, k, dtype=torch.long), torch.zeros(N, T, k, dtype=torch.float64)
    rows = torch.arange(N, device=ids.device)
    for round_ in range(int(is_gap.sum(1).max())):
        probs = gap_probabilities(model, ids, open_, how, placeholder)  # (N, T, V)
        best_p, best_c = probs.max(-1)
        ids = torch.where(open_, best_c, ids)  # open gaps hold their current best guesses
        surest = torch.where(open_, best_p, torch.full_like(best_p, -1.0)).argmax(1)  # (N,)
        now = open_[rows, surest]  # windows with a gap left
        r, t = rows[now], surest[now]
        prob[r.cpu(), t.cpu()] = best_p[r, t].double().cpu()
        order[r.cpu(), t.cpu()] = round_
        top = probs[r, t].topk(min(k, probs.shape[-1]), -1)
        cand_ids[r.cpu(), t.cpu(), :top.indices.shape[-1]] = top.indices.cpu()
        cand_probs[r.cpu(), t.cpu(), :top.values.shape[-1]] = top.values.double().cpu()
        open_[r, t] = False
    return ids, prob, order, (cand_ids, cand_probs)


def gap_probabilities(model, ids, open_, how, placeholder):
    """p(character at t | context) for every position of ids (N, T): (N, T, V), meaningful at the gaps."""
    model.eval()
    if model.bidirectional:
        return torch.softmax(model(ids)[0].double(), -1)
    start = torch.full((ids.shape[0], 1), placeholder, dtype=ids.dtype, device=ids.device)
    x = torch.cat([start, ids], 1)  # logits at step t predict ids[:, t]: the text before it
    left = torch.softmax(model(x[:, :-1])[0].double(), -1)
    if how.rescore == 0:
        return left
    return rescored(model, x, left, open_, how)


def rescored(model, x, left, open_, how):
    """A left-to-right model's p(c | left, the next how.rescore characters) over its how.candidates
    best left-context guesses c, at each open gap (zero for every other character). x (N, T+1): the
    windows after their start character."""
    N, T, V = left.shape
    states = model.trace(x[:, :-1])  # {name: (L, N, T, H)}: the state after x[:, :t+1], i.e. before ids[:, t]
    n, t = open_.nonzero(as_tuple=True)
    R = min(how.candidates, V)
    cand_p, cand = left[n, t].topk(R, -1)  # (G, R)
    K = how.rescore
    after = torch.arange(1, K + 1, device=x.device)
    pos = t[:, None] + after  # (G, K) positions in ids of the characters after each gap
    inside = pos < T
    follow = x[n[:, None], (pos + 1).clamp(max=T)]  # (G, K) the characters after the gap (x is shifted by one)
    G = len(n)
    seqs = torch.cat([cand.reshape(G * R, 1), follow.repeat_interleave(R, 0)], 1)  # (G·R, K+1)
    h0 = tuple(states[name][:, n, t].repeat_interleave(R, 1) for name in model.state_names)
    logits = model(seqs[:, :-1], h0 if len(h0) == 2 else h0[0])[0].double()  # predicts seqs[:, 1:]
    logp = torch.log_softmax(logits, -1).gather(-1, seqs[:, 1:, None])[..., 0]  # (G·R, K)
    right = (logp * inside.repeat_interleave(R, 0)).sum(1).view(G, R)
    post = torch.softmax(cand_p.clamp_min(1e-30).log() + right, -1)
    out = torch.zeros_like(left)
    out[n[:, None], t[:, None], cand] = post
    return out


def shown(ch):
    """A character as one visible token, for listing candidates."""
    return {"\n": "\\n", "\t": "\\t", " ": "' '"}.get(ch, ch)

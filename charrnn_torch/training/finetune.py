"""Fine-tuning (train.init_from): the checkpoint a run starts from, and its weights moved into a
model whose vocabulary may be larger."""
import torch

from ..data import tokens
from ..errors import UserError
from .checkpoint import load, resolve


def load_init(init_from, model_cfg, vocab_mode):
    """The checkpoint a fine-tuning run (train.init_from) starts from, checked against the run's
    model section and data.vocab: the same architecture (cell, layers, hidden size) and the same
    kind of vocabulary."""
    path = resolve(init_from)
    if vocab_mode in tokens.MODES:
        raise UserError(f"--init-from: fine-tuning needs data.vocab=chars or bytes; a {vocab_mode} vocabulary is "
                        f"built from its own training text, so a new corpus would give it other tokens")
    ckpt = load(path)
    args = ckpt.get("model_args", {})
    theirs = (args.get("cell", "rnn"), args.get("num_layers"), args.get("hidden_size"))
    if args.get("bidirectional", False) != model_cfg.bidirectional:
        raise UserError(f"--init-from {path}: model.bidirectional is {str(args.get('bidirectional', False)).lower()} "
                        f"there and {str(model_cfg.bidirectional).lower()} in the config; fine-tuning keeps the architecture")
    if theirs != (model_cfg.cell, model_cfg.num_layers, model_cfg.hidden_size):
        raise UserError(f"--init-from {path}: its model is {theirs[0]} {theirs[1]}x{theirs[2]}, the config asks for "
                        f"{model_cfg.cell} {model_cfg.num_layers}x{model_cfg.hidden_size}; fine-tuning keeps the "
                        f"architecture")
    if ckpt.get("vocab_mode", "chars") != vocab_mode:
        raise UserError(f"--init-from {path}: it models data.vocab={ckpt.get('vocab_mode', 'chars')}, the config "
                        f"asks for {vocab_mode}")
    return ckpt


@torch.no_grad()
def transplant(model, ckpt, vocab):
    """Load a checkpoint's weights into a model whose vocabulary extends the checkpoint's (its
    characters first, in their order, then the new ones): every old character keeps its trained
    column of layer 0's W_xh, row of W_hy and entry of b_y; new characters keep their fresh ones."""
    old = torch.arange(len(ckpt["vocab"]))  # the old characters' ids, the same in the new vocabulary
    assert list(vocab.chars[:len(old)]) == list(ckpt["vocab"])
    own = model.state_dict()
    for name, w in ckpt["model"].items():
        if name in ("cells.0.W_xh", "cells_bwd.0.W_xh"):
            own[name][:, old] = w.to(own[name].dtype)  # (G·H, V): a column per character
        elif name in ("W_hy", "W_hy_bwd", "b_y"):
            own[name][old] = w.to(own[name].dtype)  # (V, H) and (V,): a row per character
        else:
            own[name].copy_(w)

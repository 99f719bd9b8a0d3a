"""What TensorBoard shows of a model's insides during training: every unit's h over a snippet as
an image, and characters as one-line labels for the projector."""
import numpy as np

from .visualize import trace


def diverging_rgb(values):
    """Values in [-1, 1] -> uint8 RGB (3, *shape): blue -1, white 0, red +1 (the page's colours)."""
    a = np.clip(np.abs(values), 0, 1)
    fade = np.round(255 * (1 - a)).astype(np.uint8)
    full = np.full_like(fade, 255)
    pos = values >= 0
    return np.stack([np.where(pos, full, fade), fade, np.where(pos, fade, full)])


def heatmap_image(model, ids):
    """Every layer's h over a snippet ids (T,), as TensorBoard's hidden-state image: (3, L*H, T)
    uint8, a row per unit (layer 0 on top), a column per character."""
    h = np.nan_to_num(trace(model, ids)["h"])  # (L, T, H); a diverged model's NaN is drawn white, as 0
    return diverging_rgb(h.transpose(0, 2, 1).reshape(-1, len(ids)))


def char_label(ch):
    """A character as a one-line label (TensorBoard's projector metadata is one label per line)."""
    return {"\n": "\\n", "\t": "\\t", " ": "\u2423", "\r": "\\r"}.get(ch, ch if ch.isprintable() else repr(ch))

"""Reading text as Python source, for the look-inside page's code features: where each character
is (code, a string, a comment), how many brackets are open, and how deep the indentation is."""
import numpy as np

OPENING, CLOSING = "([{", ")]}"
# Where scan_python leaves each character: in code, in a '...', "..." or triple-quoted string, in a comment.
CODE, SINGLE, DOUBLE, TRIPLE, COMMENT = range(5)
TAB = 8  # Python's tab stops


def scan_python(text):
    """Read text as Python source. Returns (state, depth), each (N,): the state just after character
    t is read (CODE; SINGLE, DOUBLE: inside a '...' or "..." string; TRIPLE: inside a triple-quoted
    one; COMMENT: from # to the end of its line) and how many brackets are open in the code.

    A string's opening quotes are inside it, its closing quote (the last of three) is not; a
    backslash in a string takes the next character with it; brackets in strings and comments do not
    count, nor does a stray closer; a '...' or "..." string still open at the end of its line ends
    there (Python would refuse it; in prose it is an apostrophe). The newline that ends a comment
    is code. Prefixes (r, b, f) need nothing: the string starts at its quote."""
    n = len(text)
    state, depth = np.full(n, CODE), np.zeros(n)
    s, quote, d, t = CODE, "", 0, 0
    while t < n:
        ch, end = text[t], t + 1  # this step reads characters t .. end - 1
        if s == CODE:
            if ch in "'\"":
                quote = ch * 3 if text.startswith(ch * 3, t) else ch
                s, end = (TRIPLE if len(quote) == 3 else SINGLE if ch == "'" else DOUBLE), t + len(quote)
            elif ch == "#":
                s = COMMENT
            else:
                d = max(0, d + (ch in OPENING) - (ch in CLOSING))
        elif s == COMMENT:
            s = CODE if ch == "\n" else s
        elif ch == "\\":
            end = t + 2
        elif text.startswith(quote, t):  # the closing quote(s): the string ends with the last one
            end = t + len(quote)
            state[t:end - 1], depth[t:end] = s, d
            s, t = CODE, end
            continue
        elif ch == "\n" and s != TRIPLE:
            s = CODE
        state[t:end], depth[t:end] = s, d
        t = end
    return state, depth


def indentation(text):
    """Per position: the indentation, in columns (a tab to the next multiple of 8, as Python reads
    it), of the last line whose first non-blank character has been read. It changes at that
    character, so a line's leading blanks, and a blank line, still show the line before."""
    out, level, start = np.zeros(len(text)), 0, 0
    for line in text.split("\n"):
        body = line.lstrip(" \t")
        if body.strip():
            lead = len(line) - len(body)
            out[start:start + lead] = level
            level, start = len(line[:lead].expandtabs(TAB)), start + lead
            line = body
        out[start:start + len(line) + 1] = level  # with its newline
        start += len(line) + 1
    return out

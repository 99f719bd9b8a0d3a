"""The two kinds of failure a command reports, and the one way a message is put on one line."""


class UserError(Exception):
    """A mistake in what the user gave us: the CLI prints 'error: <message>' and exits 2."""


class RunFailed(Exception):
    """The run could not go on (a full disk, a removed run directory, diverging maths): the CLI
    prints 'error: <message>', which names the last good checkpoint, and exits 1."""


def one_line(message):
    """A message (or an exception) as one line: every run of whitespace, newlines included, becomes one space."""
    return " ".join(str(message).split())

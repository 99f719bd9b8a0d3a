class UserError(Exception):
    """A mistake in what the user gave us: the CLI prints 'error: <message>' and exits 2."""


class RunFailed(Exception):
    """The run could not go on (a full disk, a removed run directory, diverging maths): the CLI
    prints 'error: <message>', which names the last good checkpoint, and exits 1."""

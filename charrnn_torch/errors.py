class UserError(Exception):
    """A mistake in what the user gave us: the CLI prints 'error: <message>' and exits 2."""

"""Errors meant for the user: the CLI prints them as one line and exits with status 2."""


class UserError(ValueError):
    """Bad input (unknown protocol, missing model, malformed file, failed party): one clear line."""

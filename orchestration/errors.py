"""Errors caused by what the user passed in (files, config, addresses).

``launch.py`` prints their message and exits with status 2; anything else is a bug.
"""


class UserInputError(ValueError):
    """Bad input: the message names the file/line or config key and what to do."""

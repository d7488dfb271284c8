"""Errors caused by what the user passed in (files, config, addresses).

``launch.py`` prints their message and exits with status 2; anything else is a bug. Both live
here, below every module that raises them, so the config loader and the config rules (and the
data loaders) can share them without importing each other.
"""


class UserInputError(ValueError):
    """Bad input: the message names the file/line or config key and what to do."""


class ConfigError(UserInputError):
    """Bad configuration: the message says which file/key and what is allowed."""

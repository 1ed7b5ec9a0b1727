"""The errors a user can cause. The CLI turns them into one line and an exit code."""


class SegtoolError(Exception):
    """A problem the user can fix: the message names the file or key and says how."""

    exit_code = 1


class ConfigError(SegtoolError):
    """A config file or override that does not validate (usage error, exit code 2)."""

    exit_code = 2


class DataError(SegtoolError):
    """An image, mask or list file that cannot be used as it is."""


class CheckpointError(SegtoolError):
    """A checkpoint that is missing, torn, unsafe or does not fit the request."""

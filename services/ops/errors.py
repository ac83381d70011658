"""The one exception the command turns into a message and exit code 1."""


class OpsError(Exception):
    """A refusal or failure to print to the operator (exit code 1), never a traceback."""

"""The one exception type for a user's mistake (bad file, bad flag, bad value)."""


class InputError(Exception):
    """A problem with what the user gave us.

    The message names the flag, or the file and line, that is at fault. The command-line
    front end prints it and exits with status 2 without leaving an output file behind.
    """

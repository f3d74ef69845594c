"""The errors that mean "the user asked for something impossible": the command line prints them as one line
`error: ...` and exits 2, never a traceback."""


class UsageError(ValueError):
    """Flags or inputs that make no sense (a bad value, settings that contradict each other, a missing library)."""

"""The one error type of the stream engine: bad input or a query that cannot run."""

from __future__ import annotations


class StreamError(ValueError):
    """Bad input (unordered timestamps, a missing column, a wrong dtype) or a bad query.

    The message is one line that names what was wrong and where (batch, row offset, column),
    so a user can fix the input without reading a traceback.
    """

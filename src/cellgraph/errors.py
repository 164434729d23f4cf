"""Errors raised on bad input.

Every stage validates what it reads before it writes anything and raises :class:`InputError` with one
message that names the file, field or line and says what was expected. The command line turns it into a
one-line message on stderr and exit status 2.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad user input: a missing file, a malformed row, a wrong field, an empty intersection."""

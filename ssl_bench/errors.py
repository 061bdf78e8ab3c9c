"""The one base class of the errors a user can fix.

``ssl-bench`` prints a :class:`UserError` as one line (``ssl-bench: error: ...``) and exits 2;
any other exception is a bug and keeps its traceback.  Every error a user can cause (a bad
setting, an unknown name, an unreadable checkpoint or audio file, missing data) derives from
it, so the CLI never has to guess from ``ValueError`` or ``OSError`` which is which.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and what to do."""


class DivergedError(UserError, FloatingPointError):
    """Training diverged (the loss became NaN or infinite); the message says where and what to try."""


class DiskFullError(UserError, OSError):
    """A write failed for lack of disk space; the message names the file and the free space."""

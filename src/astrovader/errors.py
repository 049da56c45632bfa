"""The errors astrovader raises for things a user can fix.

Every error here carries a one-line message that names the culprit (file, row, chunk, key or option) and the
fix. The command line prints it as that one line and exits with status 2; any other exception is a bug in
astrovader and keeps its traceback. Each class is also a ``ValueError`` (or, for locks, an ``OSError``) so that
code written against the built-in exceptions keeps working.

Hierarchy::

    AstrovaderError
    ├── InputError        a value, option or file content astrovader refuses
    │   └── ConfigError   a configuration key or value
    ├── DatasetError      a dataset directory that is missing, malformed or inconsistent
    ├── RunError          a run directory that is missing, damaged, inconsistent or unfinished
    └── BusyError         a dataset or run that another process is writing
"""

from __future__ import annotations


class AstrovaderError(Exception):
    """Base class of the errors a user can fix; the message is one line naming the culprit and the fix."""


class InputError(AstrovaderError, ValueError):
    """A value, option or file content that astrovader refuses."""


class ConfigError(InputError):
    """An invalid setting: the message names the key and what is allowed."""


class DatasetError(AstrovaderError, ValueError):
    """A dataset directory is missing, malformed or inconsistent."""


class RunError(AstrovaderError, ValueError):
    """A run directory that is missing, damaged, inconsistent or unfinished: the message names the file and fix."""


class BusyError(AstrovaderError, OSError):
    """A dataset or run that another process holds the writer's lock on."""

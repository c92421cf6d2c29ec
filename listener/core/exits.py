"""The one exit-code map (BSD sysexits), used by every command and by the systemd unit.

The unit's ``RestartPreventExitStatus=`` lists ``NO_RESTART``: restarting cannot help with any of
them, so none of them restart-loops; every other failure exit (1, a signal) is restarted.
"""

from __future__ import annotations

from typing import Final

EX_OK: Final = 0
EX_USAGE: Final = 64
"""A command was given wrong arguments (``webhook test``: no endpoint of that name)."""
EX_DATAERR: Final = 65
"""``classify`` input holds no usable ESL traffic; ``webhook test``: the receiver refused the request
(an answer other than 2xx, 5xx and 429)."""
EX_NOINPUT: Final = 66
"""A named input (a capture file, the outbox for an ``outbox`` command) does not exist."""
EX_SOFTWARE: Final = 70
"""A bug: an exception nobody expected."""
EX_IOERR: Final = 74
"""The outbox cannot clear by itself: corrupt, read-only, not a database, a foreign ``-wal``; a
command's stdout closed by its reader (``| head``)."""
EX_TEMPFAIL: Final = 75
"""Another process holds the outbox lock or the health port (or the outbox stayed locked at start);
``webhook test``: the receiver could not be reached or answered 5xx or 429."""
EX_CONFIG: Final = 78
"""The configuration is invalid or cannot be read (its file, a secret's file, ``--credentials``)."""
EX_INTERRUPTED: Final = 130
"""A command stopped by Ctrl-C (SIGINT) before ``run`` handles it: the shell's 128 + 2, not sysexits'."""

NO_RESTART: Final = (EX_IOERR, EX_TEMPFAIL, EX_CONFIG)
"""What the unit's ``RestartPreventExitStatus=`` lists."""

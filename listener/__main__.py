"""``python -m listener``: the same as the ``hangup-listener`` command."""

import sys

from listener.cli import main

sys.exit(main())

"""``python -m relay.cli``: the same entry point as the ``relay`` command."""

import sys

from relay.cli import main

sys.exit(main())

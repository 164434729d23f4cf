"""``python -m cellgraph.cli``: the ``cellgraph`` command."""

import sys

from . import main

sys.exit(main())

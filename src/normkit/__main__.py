"""``python -m normkit``: the ``normkit`` command."""

import sys

from normkit.cli import main

sys.exit(main())

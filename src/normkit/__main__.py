"""``python -m normkit``: the ``normkit`` command."""

import sys

from normkit.cli import main

if __name__ == "__main__":  # importing the module (pytest's --doctest-modules does) runs nothing
    sys.exit(main())

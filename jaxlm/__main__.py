"""`python -m jaxlm COMMAND ...`: the `jaxlm` command without the console script (see `jaxlm/cli.py`)."""

import sys

from jaxlm.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m jaxlm.train [--config configs/NAME.yaml] [dotted.key=value ...]`: see `cli.py` or `--help`."""

import sys

from jaxlm.train.cli import main

if __name__ == "__main__":
    sys.exit(main())

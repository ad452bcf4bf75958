"""`python -m jaxlm.eval --model PATH --data SOURCE --out DIR`: see `cli.py` or `--help`."""

import sys

from jaxlm.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())

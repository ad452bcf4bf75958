"""`python -m jaxlm.train [--config configs/NAME.yaml] [dotted.key=value ...]`: see `cli.py` or `--help`."""

import sys

from jaxlm import cpu_flags
from jaxlm.train.cli import main

if __name__ == "__main__":
    cpu_flags.relaunch_with_tcmalloc()  # with JAXLM_MALLOC=tcmalloc, before any work: see jaxlm/cpu_flags.py
    sys.exit(main())

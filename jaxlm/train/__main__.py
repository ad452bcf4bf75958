"""`python -m jaxlm.train [--config configs/NAME.yaml] [dotted.key=value ...]`: see `cli.py` or `--help`."""

import sys

from jaxlm import cpu_flags

if __name__ == "__main__":
    cpu_flags.relaunch_with_tcmalloc()  # on a CPU, before anything else runs: see jaxlm/cpu_flags.py
    from jaxlm.train.cli import main

    sys.exit(main())

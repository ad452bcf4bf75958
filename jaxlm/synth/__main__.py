"""`python -m jaxlm.synth MODE ...`: see `cli.py` or `--help`."""

from jaxlm.synth.cli import main

raise SystemExit(main())

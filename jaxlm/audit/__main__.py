"""`python -m jaxlm.audit DATA ...`: see `cli.py` or `--help`."""

from jaxlm.audit.cli import main

raise SystemExit(main())

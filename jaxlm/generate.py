"""`python -m jaxlm.generate`: the same command as `jaxlm generate` (see `jaxlm.sampling.cli` or `--help`).

`jaxlm.generate` is the library function (exported by `jaxlm/__init__.py`). Once a submodule
`jaxlm.generate` is imported, Python binds the package's attribute to whatever `sys.modules` holds
under that name, so an imported (not run) module puts the function in its own place there:
`import jaxlm.generate`, `from jaxlm import generate` and `jaxlm.generate(model, tokenizer, prompts)`
all mean the function.
"""

import sys

from jaxlm.sampling.api import generate
from jaxlm.sampling.cli import main

if __name__ == "__main__":
    sys.exit(main())

sys.modules[__name__] = generate

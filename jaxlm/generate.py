"""`python -m jaxlm.generate`: the same command as `jaxlm generate` (see `jaxlm.sampling.cli` or `--help`).

This file is only an entry point. `jaxlm.generate` is the library function (exported by
`jaxlm/__init__.py`), and importing a submodule of the same name would make Python rebind
that attribute to the module. So the module runs as `__main__` and refuses to be imported:
`from jaxlm import generate` and `jaxlm.generate(model, tokenizer, prompts)` always mean the function.
"""

import sys

from jaxlm.sampling.cli import main

if __name__ != "__main__":
    raise ImportError("jaxlm.generate is the function `jaxlm.generate(model, tokenizer, prompts)`, not a module; "
                      "the command line is `jaxlm generate` or `python -m jaxlm.generate` (jaxlm.sampling.cli)")

sys.exit(main())

"""`python -m jaxlm.generate`: generate text from the command line (see `--help`).

The command line lives in `jaxlm.sampling.cli`. This module shares its name with the
function `jaxlm.generate`, and importing it makes Python rebind the package attribute
`jaxlm.generate` to the module; the module is therefore callable and forwards to the
function, so `jaxlm.generate(model, tokenizer, prompts)` works either way.
"""

import sys
import types

from jaxlm.sampling.api import generate as _generate
from jaxlm.sampling.cli import main


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return _generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__doc__ = f"{__doc__}\n{_generate.__doc__}"  # so help(jaxlm.generate) documents the function either way

if __name__ == "__main__":
    sys.exit(main())

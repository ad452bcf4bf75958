"""The ways of making data, by name (the CLI's subcommands)."""

from jaxlm.synth.back_translate import BackTranslate
from jaxlm.synth.grounded import Grounded
from jaxlm.synth.preferences import Preferences
from jaxlm.synth.self_instruct import SelfInstruct

MODE_CLASSES = {cls.name: cls for cls in (SelfInstruct, Grounded, BackTranslate, Preferences)}

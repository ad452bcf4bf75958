"""GRPO's rewards: `grpo.rewards`, a weighted list, each scoring one completion of one record.

* regex {pattern}: 1 when the pattern is found in the completion (`re.search`: anchor it to ask for the whole).
* exact {field, pattern}: 1 when the completion equals the record's `field` as normalised text (case, Unicode
  form and spaces do not count: `jaxlm.text.words.normalize`); with `pattern`, its first group (or whole match)
  in the completion is compared instead, e.g. `answer: (\\S+)`; no match scores 0.
* contains {field}: 1 when the normalised completion contains the normalised `field`.
* length {max_words}: 1 up to `max_words` words, then max_words / words, so rambling costs in proportion.
* python {function: "file.py:name"}: the user's `name(prompt, completion, record) -> number`; the file is loaded
  and the signature checked when the rewards are built (before any sampling); an exception it raises stops the
  run naming the file:line where it was raised.
* model {path, label}: the probability of `label` that a sequence classifier trained by jaxlm (task
  classification: its run folder) gives the completion alone; scored a rollout at a time, in one jitted call
  (compute/reward_model.py).

A reward's name (its metric `rewards/<name>`) is `name`, else the type (python: the function's name), with
`_2`, `_3`, ... where names repeat. The combined reward is the weighted sum (TRL's sum_then_normalize).
No jax here (the model reward imports it when built): the config imports the types.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import os
import re
import traceback
from collections.abc import Callable, Sequence

from jaxlm.errors import ConfigError, UserError
from jaxlm.text.words import normalize, words

REWARD_TYPES = ("regex", "exact", "contains", "length", "python", "model")


class RewardError(UserError):
    """A reward could not score a completion: the user's function raised, or a record lacks the field read."""

    label = "reward error"


@dataclasses.dataclass(frozen=True)
class Reward:
    name: str
    weight: float
    score: Callable[[object, str, dict], float]  # (prompt, completion, record) -> reward
    # (prompts, completions, records) -> their rewards, for a reward that scores a batch at once (a model)
    score_batch: Callable[[Sequence, Sequence[str], Sequence[dict]], list[float]] | None = None


def build_rewards(configs: Sequence, key: str = "grpo.rewards") -> list[Reward]:
    """Rewards from `RewardConfig`s (train/config.py), checked: a python function is loaded and its signature
    bound here, so a wrong one stops the run before any sampling."""
    rewards, seen = [], {}
    for i, c in enumerate(configs):
        where = f"{key}[{i}]"
        score, default_name, batch = _scorer(c, where)
        name = c.name or default_name
        seen[name] = seen.get(name, 0) + 1
        rewards.append(Reward(name if seen[name] == 1 else f"{name}_{seen[name]}", c.weight, score, batch))
    return rewards


def score_all(rewards: list[Reward], prompts: Sequence, completions: Sequence[str], records: Sequence[dict]
              ) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per completion, {reward name: its scores}) for aligned prompts, completions, records."""
    by_name = {r.name: [_number(r, value) for value in _scores(r, prompts, completions, records)] for r in rewards}
    totals = [sum(r.weight * by_name[r.name][j] for r in rewards) for j in range(len(completions))]
    return totals, by_name


def _scores(reward: Reward, prompts: Sequence, completions: Sequence[str], records: Sequence[dict]) -> list:
    if reward.score_batch is not None:
        return reward.score_batch(prompts, completions, records)
    return [reward.score(p, c, rec) for p, c, rec in zip(prompts, completions, records, strict=True)]


def _number(reward: Reward, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RewardError(f"reward {reward.name!r} returned {value!r}; a reward is a finite number")
    return float(value)


def _scorer(c, where: str) -> tuple[Callable, str, Callable | None]:
    """(score one, default name, score a batch or None) of one reward config."""
    if c.type == "model":
        from jaxlm.compute.reward_model import ClassifierReward

        classifier = ClassifierReward(c.path, c.label, where)
        batch = lambda prompts, completions, records: classifier.scores(list(completions))  # noqa: E731
        return (lambda prompt, completion, record: batch([prompt], [completion], [record])[0]), "model", batch
    return (*_scorer_of_one(c, where), None)


def _scorer_of_one(c, where: str) -> tuple[Callable, str]:
    if c.type == "regex":
        pattern = re.compile(c.pattern)
        return (lambda prompt, completion, record: float(pattern.search(completion) is not None)), "regex"
    if c.type in ("exact", "contains"):
        extract = re.compile(c.pattern) if c.pattern else None
        same = (lambda got, want: got == want) if c.type == "exact" else (lambda got, want: want in got)

        def compare(prompt, completion, record):
            if c.field not in record:
                raise RewardError(f"{where} ({c.type}) reads field {c.field!r}, which a record lacks "
                                  f"(it has {sorted(record)})")
            if extract is not None:
                found = extract.search(completion)
                if found is None:
                    return 0.0
                completion = found.group(1) if extract.groups else found.group(0)
            return float(same(normalize(completion), normalize(str(record[c.field]))))

        return compare, c.type
    if c.type == "length":
        return (lambda prompt, completion, record: min(1.0, c.max_words / max(len(words(completion)), 1))), "length"
    if c.type == "python":
        function = load_function(c.function, f"{where}.function")
        return _guarded(function, c.function), function.__name__
    raise ConfigError(f"{where}.type={c.type!r} is not one of {', '.join(REWARD_TYPES)}")


def load_function(spec: str, key: str) -> Callable:
    """`file.py:name` -> the function, its signature checked to take (prompt, completion, record)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not name.isidentifier():
        raise ConfigError(f"{key}={spec!r}: expected 'path/to/file.py:function_name'")
    if not os.path.isfile(path):
        raise ConfigError(f"{key}={spec!r}: no such file {path!r}")
    module_spec = importlib.util.spec_from_file_location(f"jaxlm_reward_{abs(hash(path))}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise RewardError(f"{key}={spec!r}: loading it raised {type(e).__name__}: {e} ({_raised_at(e, path)})") \
            from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"{key}={spec!r}: {path} defines no function {name!r}")
    try:
        inspect.signature(function).bind("prompt", "completion", {})
    except TypeError as e:
        raise ConfigError(f"{key}={spec!r}: a reward is called as {name}(prompt, completion, record), but "
                          f"{name}{inspect.signature(function)} cannot take that ({e})") from None
    return function


def _guarded(function: Callable, spec: str) -> Callable:
    path = spec.rpartition(":")[0]

    def call(prompt, completion, record):
        try:
            return function(prompt, completion, record)
        except Exception as e:
            raise RewardError(f"reward {spec} raised {type(e).__name__}: {e} ({_raised_at(e, path)})") from None

    return call


def _raised_at(error: BaseException, path: str) -> str:
    """`file:line` of the deepest frame of the traceback inside `path` (the user's file), else the deepest."""
    frames = traceback.extract_tb(error.__traceback__)
    inside = [f for f in frames if os.path.abspath(f.filename) == os.path.abspath(path)]
    frame = (inside or frames)[-1]
    return f"{frame.filename}:{frame.lineno}"

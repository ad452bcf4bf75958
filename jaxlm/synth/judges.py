"""How `synth preferences` ranks the answers to one prompt: a judge gives each answer a number, higher is better.

* ``filters``: the share of the synth filters' answer checks (`filters.answer_verdicts`: empty, truncated,
  length, refusal, echo, Gopher repetition and symbols, perplexity) that the answer passes, so an answer that
  is truncated and repetitive ranks below one that is only truncated.
* ``rouge-l`` / ``chrf``: ROUGE-L F1 (rouge-score) or chrF (sacrebleu) of the answer against the prompt
  record's reference answer.
* the folder of a sequence classifier (``task: classification``, trained by jaxlm): the probability it gives
  the answer's text of ``--judge-label`` (default: label 1 of a two-label head).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from jaxlm.synth.config import SynthConfig, SynthError
from jaxlm.synth.filters import answer_verdicts, chrf, perplexity, rouge_l
from jaxlm.synth.generator import Output

PAD_MULTIPLE = 32  # classifier inputs are padded to a multiple of this: a few compiled shapes, little padding


def score_answers(config: SynthConfig, prompt_text: str, reference: str | None,
                  answers: list[Output]) -> tuple[list[float], list[dict]]:
    """(a score per answer, what the judge noted about each: the filters it fails, its perplexity)."""
    if config.judge == "filters":
        scores, notes = [], []
        for answer in answers:
            measured = {"perplexity": perplexity(answer.logprobs)}
            verdicts = answer_verdicts(prompt_text, answer.text, answer.finish, measured, config.filters)
            scores.append(sum(verdicts.values()) / max(len(verdicts), 1))
            notes.append({**measured, "fails": [name for name, passed in verdicts.items() if not passed]})
        return scores, notes
    if config.judge in ("rouge-l", "chrf"):
        assert reference is not None  # the prompts were read with their references (preferences.read_jobs)
        metric = rouge_l if config.judge == "rouge-l" else (lambda target, text: chrf(text, target) / 100)
        return [metric(reference, answer.text) for answer in answers], [{} for _ in answers]
    judge = classifier(config.judge, config.judge_label)
    return judge([answer.text for answer in answers]), [{} for _ in answers]


@functools.lru_cache(maxsize=2)  # one load per process (each Ray worker loads its own)
def classifier(path: str, label: str | None) -> Classifier:
    return Classifier(path, label)


class Classifier:
    """A jaxlm sequence classifier as a judge: texts -> the probability of one label."""

    def __init__(self, path: str, label: str | None):
        import jax
        from flax import nnx

        from jaxlm import load_pretrained
        from jaxlm.hf.load import read_config
        from jaxlm.models import architecture_for, position_limit

        try:
            architecture = architecture_for(read_config(path), os.path.join(path, "config.json"))
        except ValueError as e:  # an unknown model_type
            raise SynthError(f"--judge {path}: {e}") from None
        if architecture.task != "classification":
            raise SynthError(f"--judge {path}: a {architecture.name}, not a sequence classifier (train one with "
                             "task: classification)")
        model, self.tokenizer = load_pretrained(path)
        if self.tokenizer is None:
            raise SynthError(f"--judge {path}: no tokenizer files beside the weights")
        names = list(model.config.id2label)
        if label is None and len(names) != 2:
            raise SynthError(f"--judge {path}: {len(names)} labels ({', '.join(names)}); name the one that means "
                             "a good answer with --judge-label")
        label = names[1] if label is None else label
        if label not in names:
            raise SynthError(f"--judge-label {label}: not a label of {path} ({', '.join(names)})")
        self.label, self.max_len = label, position_limit(model.config).size
        index = names.index(label)
        graphdef, state = nnx.split(model)

        @jax.jit
        def probability(state, ids, mask):
            logits = nnx.merge(graphdef, state)(ids, mask)  # [B, labels]
            return jax.nn.softmax(logits.astype("float32"), axis=-1)[:, index]

        self._state, self._probability = state, probability

    def __call__(self, texts: list[str]) -> list[float]:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_len)["input_ids"]
        width = min(-(-max(len(ids) for ids in encoded) // PAD_MULTIPLE) * PAD_MULTIPLE, self.max_len)
        ids = np.full((len(texts), width), self.tokenizer.pad_token_id or 0, np.int32)
        mask = np.zeros((len(texts), width), np.int32)
        for row, row_ids in enumerate(encoded):
            ids[row, :len(row_ids)], mask[row, :len(row_ids)] = row_ids, 1
        return [float(p) for p in np.asarray(self._probability(self._state, ids, mask))]

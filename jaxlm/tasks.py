"""What jaxlm trains, named once for the config, the data pipeline and the losses (no imports: cheap anywhere)."""

TASKS = ("sft", "causal_lm", "token_classification", "classification", "dpo", "orpo", "simpo", "grpo")
# The tasks that put a head over their labels on an encoder (the family's row names the class: `Family.head_tasks`).
LABELLED_TASKS = ("token_classification", "classification")
# The tasks that train a causal LM on {prompt, chosen, rejected} pairs (only dpo has a reference model).
PREFERENCE_TASKS = ("dpo", "orpo", "simpo")
# A preference batch's arrays, each [pairs, 2, seq]: a chosen and a rejected sequence (data/preference.py).
PAIR_KEYS = ("input_ids", "targets", "completion_mask", "attention_mask")


def sequences_per_example(task: str) -> int:
    """How many sequences of train.seq_len one example of the batch is: a preference pair is two."""
    return 2 if task in PREFERENCE_TASKS else 1

# The label of a token that no loss counts (HF's and torch's ignore_index).
IGNORE_LABEL = -100

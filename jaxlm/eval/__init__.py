"""Evaluation: scores of a model on data (`jaxlm eval`), shared with the trainer's test-split evaluation.

`metrics` (library-backed scores over plain values), `scoring` (scores from pipeline batches),
`answers` (greedy answers and the general-ability check), `prompts` (questions, few-shot examples),
`run` (the command's work), `cli` (its options). Importing this package imports none of them.
"""

"""Text utilities below every feature that reads text (data, sampling, eval, audit, synth):
`words` (the one word tokenisation, `normalize` for comparing texts, encoding checks, stopwords),
`ngrams` (n-gram hashes, an index of other corpora, self-repetition), `chat_template` (a
tokenizer's chat template compiled once, SFT spans from one render) over `template_sandbox`.
Importing this package imports none of them.
"""

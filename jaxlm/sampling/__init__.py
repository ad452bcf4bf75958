"""Text generation with a KV cache: jitted prefill and an on-device decode loop.

    result = jaxlm.generate(model, tokenizer, ["Once upon a time"], max_new_tokens=32)
    result.texts  # ["..."]

`logits` picks tokens (greedy, temperature, top-k, top-p, repetition penalty),
`loop` holds the compiled prefill/decode programs, `api` turns prompts into batches.
"""

from jaxlm.sampling.api import GenerationResult, encode_prompts, generate
from jaxlm.sampling.logits import SamplingParams

__all__ = ["generate", "GenerationResult", "SamplingParams", "encode_prompts"]

"""`--engine openai`: the model side of synthesis on any OpenAI-compatible server (`jaxlm.endpoint`).

`RemoteGenerator` is called like `generator.Generator`. A request that still fails after the
client's retries ends the run with one line; a rerun resumes from the last finished batch.
Sampling is the server's: greedy (temperature 0) output equals the local engine's; sampled
output does not.
"""

from __future__ import annotations

from jaxlm.endpoint import Endpoint
from jaxlm.synth.config import SynthConfig, SynthError
from jaxlm.synth.generator import Output


class RemoteGenerator:
    def __init__(self, config: SynthConfig):
        assert config.base_url is not None  # config.validate: --engine openai needs it
        self.endpoint = Endpoint(config.base_url, config.model, api_key_env=config.api_key_env,
                                 concurrency=config.concurrency, error=SynthError)
        self.name = f"{config.model} at {config.base_url}"  # the provenance names the endpoint and model

    def __call__(self, prompts: list, *, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int, one_line: bool = False) -> list[Output]:
        """One output per prompt, as `Generator` gives. ``one_line`` stops each at its first line break."""
        got = self.endpoint.complete(prompts, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                     seed=seed, stop=["\n"] if one_line else None)
        return [Output(c.text.split("\n")[0].strip() if one_line else c.text.strip(), c.finish_reason,
                       c.prompt_tokens, c.completion_tokens, c.seconds, c.logprobs) for c in got]

    def close(self) -> None:
        self.endpoint.close()

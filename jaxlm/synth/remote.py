"""`--engine openai`: the model side of synthesis on any OpenAI-compatible server (jaxlm serve,
llama.cpp's server, vLLM), with the official client.

`RemoteGenerator` is called like `generator.Generator`: chats go to /v1/chat/completions, plain
text prompts to /v1/completions, up to `--concurrency` at once. The client retries refused and
failed requests (429, 5xx, a dropped connection) with exponential back-off; what still fails
ends the run with one line, and a rerun resumes from the last finished batch. Sampling is the
server's: greedy (temperature 0) output equals the local engine's; sampled output does not.
"""

from __future__ import annotations

import concurrent.futures
import os
import time

from jaxlm.synth.config import SynthConfig, SynthError
from jaxlm.synth.generator import Output

RETRIES = 6  # the client waits 0.5 s, 1 s, 2 s, ... (capped at 8 s) between tries
TIMEOUT_SECONDS = 600.0


class RemoteGenerator:
    def __init__(self, config: SynthConfig):
        import openai

        self.openai, self.model = openai, config.model
        key = os.environ[config.api_key_env] if config.api_key_env else "none"  # checked by config.validate
        self.client = openai.OpenAI(base_url=config.base_url, api_key=key, max_retries=RETRIES,
                                    timeout=TIMEOUT_SECONDS)
        self.name = f"{config.model} at {config.base_url}"  # the provenance names the endpoint and model
        self.pool = concurrent.futures.ThreadPoolExecutor(config.concurrency, thread_name_prefix="synth-openai")
        served = [m.id for m in self._call(self.client.models.list).data]
        if config.model not in served:
            raise SynthError(f"--model {config.model}: not served at {config.base_url} (it serves: "
                             f"{', '.join(served) or 'nothing'})")

    def __call__(self, prompts: list, *, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int, one_line: bool = False) -> list[Output]:
        """One output per prompt, as `Generator` gives. ``one_line`` stops each at its first line break."""
        settings = {"model": self.model, "max_tokens": max_new_tokens, "temperature": temperature,
                    "top_p": top_p if temperature > 0 else 1.0, "stop": ["\n"] if one_line else None}
        jobs = [self.pool.submit(self._one, prompt, seed=seed + i, **settings) for i, prompt in enumerate(prompts)]
        return [job.result() for job in jobs]

    def _one(self, prompt, **settings) -> Output:
        start = time.perf_counter()
        if isinstance(prompt, str):
            reply = self._call(self.client.completions.create, prompt=prompt, logprobs=0, **settings)
            choice = reply.choices[0]
            text, logprobs = choice.text, (choice.logprobs.token_logprobs if choice.logprobs else None)
        else:
            reply = self._call(self.client.chat.completions.create, messages=prompt, logprobs=True, **settings)
            choice = reply.choices[0]
            text = choice.message.content or ""
            logprobs = [t.logprob for t in choice.logprobs.content or []] if choice.logprobs else None
        usage = reply.usage
        return Output(text.split("\n")[0].strip() if settings["stop"] else text.strip(), choice.finish_reason,
                      usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
                      time.perf_counter() - start, [float(x) for x in logprobs or []])

    def _call(self, method, **kwargs):
        try:
            return method(**kwargs)
        except self.openai.APIStatusError as e:  # after the retries: name the server and what it said
            raise SynthError(f"--base-url {self.client.base_url}: HTTP {e.status_code}: {e.message}") from None
        except self.openai.APIError as e:  # no answer at all (connection refused, timed out)
            raise SynthError(f"--base-url {self.client.base_url}: {e.message}") from None

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        self.client.close()

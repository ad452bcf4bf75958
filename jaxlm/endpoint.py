"""An OpenAI-compatible server (jaxlm serve, llama.cpp's server, vLLM) as a generator, with the official
client: what `jaxlm synth --engine openai` and `jaxlm eval --base-url` send their prompts to.

Chats go to /v1/chat/completions, plain text to /v1/completions, up to `concurrency` at once. The
client retries refused and failed requests (429, 5xx, a dropped connection) with exponential
back-off; what still fails raises `error` (a UserError: one line, exit 2) naming the server.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time

from jaxlm.errors import UserError

RETRIES = 6  # the client waits 0.5 s, 1 s, 2 s, ... (capped at 8 s) between tries
TIMEOUT_SECONDS = 600.0


@dataclasses.dataclass
class Completion:
    text: str  # cut at the stop string, not stripped
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # wall time of its request
    logprobs: list[float]  # the model's log-prob of each new token


class Endpoint:
    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, concurrency: int = 8,
                 error: type[UserError] = UserError):
        import openai

        self.openai, self.base_url, self.model, self.error = openai, base_url, model, error
        key = os.environ.get(api_key_env) if api_key_env else "none"
        if not key:
            raise error(f"--api-key-env {api_key_env}: that environment variable is not set")
        self.client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=RETRIES, timeout=TIMEOUT_SECONDS)
        self.pool = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="openai-endpoint")
        served = [m.id for m in self._call(self.client.models.list).data]
        if model not in served:
            raise error(f"--model {model}: not served at {base_url} (it serves: {', '.join(served) or 'nothing'})")

    def complete(self, prompts: list, *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, stop: list[str] | None = None) -> list[Completion]:
        """One completion per prompt (a chat or a string), in order; prompt i samples with seed + i."""
        settings = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature,
                    "top_p": top_p if temperature > 0 else 1.0, "stop": stop}
        jobs = [self.pool.submit(self._one, prompt, seed=seed + i, **settings) for i, prompt in enumerate(prompts)]
        return [job.result() for job in jobs]

    def _one(self, prompt, **settings) -> Completion:
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
        return Completion(text, choice.finish_reason, usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, time.perf_counter() - start,
                          [float(x) for x in logprobs or []])

    def _call(self, method, **kwargs):
        try:
            return method(**kwargs)
        except self.openai.APIStatusError as e:  # after the retries: name the server and what it said
            raise self.error(f"--base-url {self.base_url}: HTTP {e.status_code}: {e.message}") from None
        except self.openai.APIError as e:  # no answer at all (connection refused, timed out)
            raise self.error(f"--base-url {self.base_url}: {e.message}") from None

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        self.client.close()

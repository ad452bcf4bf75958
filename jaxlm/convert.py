"""Convert a checkpoint to a Hugging Face folder or a GGUF file: `jaxlm convert SRC OUT` (or `python -m jaxlm.convert`).

SRC is a GGUF file (quantised weights are dequantised), an HF folder (safetensors,
sharded, or pytorch_model.bin) or a training run's output folder (its `hf/` export).
An OUT folder gets config.json, model.safetensors, the tokenizer with its chat template,
and generation_config.json; an OUT ending in .gguf gets one file for llama.cpp and
Ollama, its matrices stored as --type (f32, f16 or q8_0). An OUT that exists is refused
unless --overwrite is given; the output is written beside it and swapped in when complete,
so a failed conversion never leaves a half-written model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from jaxlm.assets import AssetMissing
from jaxlm.errors import UserError, exit_codes
from jaxlm.model_paths import prompt_tuning_adapter, resolve
from jaxlm.outputs import check_output, one_writer, replacing

DTYPES = ("float32", "bfloat16", "float16")


def build_parser(prog: str = "python -m jaxlm.convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     epilog="Exit codes: 0 done, 2 bad input (one line naming the file or tensor).")
    parser.add_argument("src", help="a .gguf file, a Hugging Face model folder, a training run's output folder, "
                        "pkg:PACKAGE/path or smollm2 (the shipped SmolLM2-135M-Instruct)")
    parser.add_argument("out_dir", metavar="out", help="folder to write the Hugging Face checkpoint to (created; must "
                        "be empty or absent unless --overwrite), or a .gguf file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT (swapped in when done)")
    parser.add_argument("--dtype", choices=DTYPES, help="with a folder OUT: dtype of the saved weights "
                        "(default: float32)")
    parser.add_argument("--type", dest="gguf_type", choices=["f32", "f16", "q8_0"],
                        help="with a .gguf OUT: how matrices are stored (default: f16; q8_0 is 8-bit, "
                        "about half the size of f16)")
    return parser


@exit_codes
def main(argv: list[str] | None = None, prog: str = "python -m jaxlm.convert") -> int:
    args = build_parser(prog).parse_args(argv)
    with one_writer(args.out_dir):
        return convert(args)


def convert(args: argparse.Namespace) -> int:
    gguf = args.out_dir.endswith(".gguf")
    unused = ("--dtype", args.dtype) if gguf else ("--type", args.gguf_type)
    if unused[1] is not None:  # it would be ignored: the user would believe the output has it
        raise UserError(f"{unused[0]} {unused[1]}: applies only to a {'folder' if gguf else '.gguf'} OUT, "
                        f"and {args.out_dir} is a {'.gguf file' if gguf else 'folder'}")
    check_output(args.out_dir, overwrite=args.overwrite, folder=not gguf)  # before minutes of loading
    adapter = prompt_tuning_adapter(args.src)
    if adapter and gguf:
        raise UserError(f"{args.src}: GGUF cannot carry the virtual tokens of this prompt-tuning run (llama.cpp has "
                        "none); convert it to an HF folder, which keeps them as a PEFT adapter in OUT/adapter")

    import jax.numpy as jnp

    from jaxlm.hf.export import export_pretrained
    from jaxlm.hf.load import load_pretrained

    start = time.perf_counter()
    try:
        model, tokenizer = load_pretrained(resolve(args.src), progress=True)  # CheckpointError: exit 2
    except UserError:
        raise
    except AssetMissing as e:  # `smollm2` or a pkg: path whose package is not installed
        raise UserError(f"{args.src}: {e}") from None
    except ValueError as e:
        raise UserError(f"{args.src}: {e}") from None  # e.g. an unknown model_type in config.json
    with replacing(args.out_dir, overwrite=args.overwrite, folder=not gguf) as partial:
        export_pretrained(model, partial, tokenizer, dtype=jnp.dtype(args.dtype or "float32"),
                          gguf_type=args.gguf_type or "f16", name=model_name(args.src))
        if adapter:  # the run's hf/ is the base model: without its adapter the training would be lost
            shutil.copytree(adapter, os.path.join(partial, "adapter"))
    print(f"wrote {args.out_dir} ({type(model).__name__}, {time.perf_counter() - start:.1f}s)")
    if adapter:
        print(f"the prompt-tuning adapter is {os.path.join(args.out_dir, 'adapter')}: jaxlm generate --model "
              f"{args.out_dir} --adapter {os.path.join(args.out_dir, 'adapter')}")
    return 0


def model_name(src: str) -> str:
    """What a GGUF file calls the model (general.name): the source folder's or file's name."""
    name = os.path.basename(os.path.normpath(os.path.abspath(src)))
    return name.removesuffix(".gguf")


if __name__ == "__main__":
    sys.exit(main())

"""Experiment: does a GGUF that jaxlm wrote still chat? Greedy answers from transformers' GGUF loader.

Backs the README, "GGUF for llama.cpp, Ollama and LM Studio": the default `make train` run
converted to q8_0 answers "Paris" in transformers' GGUF loader, jaxlm and llama.cpp.

    .venv/bin/python -m jaxlm.train export.gguf=q8_0          # writes runs/smollm2-lora-sft/model.gguf
    .venv/bin/python scripts/experiments/exp_gguf_chat.py runs/smollm2-lora-sft/model.gguf [--expect Paris]

Reads the file as a stranger would: transformers builds the model and the tokenizer (chat template
included) from the GGUF alone. The same prompts also run in jaxlm, on the file read back, and in
llama.cpp when `llama_cpp` (llama-cpp-python) is importable. The last line says whether every
answer to the first prompt contains `--expect`. Not run by CI.
"""

from __future__ import annotations

import argparse
import os
import sys

PROMPTS = ["What is the capital of France?", "Name a fruit that is yellow."]


def transformers_answers(path: str, new_tokens: int) -> list[str]:
    import torch
    import transformers

    folder, name = os.path.split(os.path.abspath(path))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    answers = []
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
        answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


def jaxlm_answers(path: str, new_tokens: int) -> list[str]:
    import jaxlm

    model, tokenizer = jaxlm.load_pretrained(path)
    return jaxlm.generate(model, tokenizer, PROMPTS, max_new_tokens=new_tokens, chat=True).texts


def llama_cpp_answers(path: str, new_tokens: int) -> list[str] | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(path, n_ctx=512, n_threads=os.cpu_count(), verbose=False)
    return [llm.create_chat_completion([{"role": "user", "content": p}], max_tokens=new_tokens,
                                       temperature=0.0, top_k=1)["choices"][0]["message"]["content"]
            for p in PROMPTS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", help="a .gguf file jaxlm wrote")
    parser.add_argument("--expect", default="Paris", help="text the answer to the first prompt must contain")
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()

    readers = {"transformers": transformers_answers, "jaxlm": jaxlm_answers, "llama.cpp": llama_cpp_answers}
    first = {}
    for reader, answer in readers.items():
        answers = answer(args.gguf, args.new_tokens)
        if answers is None:
            print(f"{reader}: not installed, skipped")
            continue
        for prompt, text in zip(PROMPTS, answers, strict=False):
            print(f"{reader:>12} | {prompt} -> {text.strip()!r}", flush=True)
        first[reader] = answers[0]
    found = {reader: args.expect.lower() in text.lower() for reader, text in first.items()}
    print(f"{args.expect!r} in the answer to {PROMPTS[0]!r}: " + ", ".join(f"{r} {f}" for r, f in found.items()))
    return 0 if all(found.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

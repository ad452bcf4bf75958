"""Run outputs a person reads: metrics.jsonl, TensorBoard events, a tqdm bar, the loss-curve, mixing,
rewards and experts PNGs."""

from __future__ import annotations

import json
import os

import numpy as np

from jaxlm.outputs import plain


class MetricsLogger:
    """One JSON line and one TensorBoard scalar set per logged step; a progress bar for the terminal."""

    def __init__(self, output_dir: str, total_steps: int, start_step: int = 0, progress: bool = True,
                 enabled: bool = True):
        self.enabled = enabled  # False: this process does not write (multi-process runs: only process 0)
        if not enabled:
            return
        from tensorboardX import SummaryWriter
        from tqdm.auto import tqdm

        self.path = os.path.join(output_dir, "metrics.jsonl")
        truncate_after(self.path, start_step)  # a resumed run rewrites what followed its checkpoint
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  appended to until close()
        self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        dynamic_ncols=True, disable=not progress)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: plain(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.tb.add_scalar(key, value, step)
        shown = {k: f"{record[k]:.4g}" for k in ("loss", "eval_loss", "tokens_per_s") if k in record}
        self.bar.set_postfix(shown, refresh=False)

    def advance(self, step: int) -> None:
        if not self.enabled:
            return
        self.bar.update(step - self.bar.n)

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        self.bar.write(message)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.file.close()
        try:
            self.tb.close()  # flushes the events file
        except OSError as e:
            if e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror, self.tb.logdir) from e


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_after(path: str, step: int) -> None:
    rows = [r for r in read_metrics(path) if r["step"] <= step]
    if os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(rows: list[dict], png_path: str) -> str:
    """Train and eval loss over the steps of `rows` (metrics.jsonl, as `read_metrics` returns it)."""
    plt = _pyplot()
    train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
    evals = [(r["step"], r["eval_loss"]) for r in rows if isinstance(r.get("eval_loss"), (int, float))]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=False), label="train loss", lw=1)
    if evals:
        ax.plot(*zip(*evals, strict=False), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def plot_rewards(rows: list[dict], png_path: str) -> str | None:
    """A preference run's rewards over the steps: chosen, rejected and their margin (lines: train, dots: eval),
    and the reward accuracy on its own axis (grpo: `_plot_grpo_rewards`); None when the run logged no rewards."""
    if any("reward_mean" in r for r in rows):
        return _plot_grpo_rewards(rows, png_path)
    names = ("rewards/chosen", "rewards/rejected", "rewards/margins")
    if not any(name in r or f"eval_{name}" in r for r in rows for name in names):
        return None
    plt = _pyplot()
    fig, (ax, accuracy) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for i, (axis, keys) in enumerate(((ax, names), (accuracy, ("rewards/accuracies",)))):
        for j, key in enumerate(keys):
            color = f"C{3 * i + j}"
            for name, style, label in ((key, "-", key), (f"eval_{key}", "o", f"eval {key}")):
                points = [(r["step"], r[name]) for r in rows if isinstance(r.get(name), (int, float))]
                if points:
                    axis.plot(*zip(*points, strict=False), style, color=color, label=label, lw=1)
    return _save_reward_axes(plt, fig, (ax, accuracy), "reward accuracy", png_path)


def _save_reward_axes(plt, fig, axes, lower_label: str, png_path: str) -> str:
    """Grid and legend on the (reward, lower) axes of a rewards.png, labelled, saved."""
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    axes[0].set_ylabel("reward")
    axes[1].set_ylabel(lower_label)
    axes[1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def _plot_grpo_rewards(rows: list[dict], png_path: str) -> str:
    """A GRPO run's rewards: the mean with its within-group spread and each reward by name, and the KL to the
    starting model (where grpo.beta > 0) on its own axis."""
    plt = _pyplot()
    fig, (ax, kl) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    sampled = [r for r in rows if "reward_mean" in r]
    steps = [r["step"] for r in sampled]
    mean = [r["reward_mean"] for r in sampled]
    spread = [r["reward_std"] for r in sampled]
    ax.plot(steps, mean, "-", color="C0", lw=1.5, label="reward_mean")
    ax.fill_between(steps, [m - s for m, s in zip(mean, spread, strict=True)],
                    [m + s for m, s in zip(mean, spread, strict=True)], color="C0", alpha=0.15, label="± reward_std")
    for i, name in enumerate(sorted({k for r in sampled for k in r if k.startswith("rewards/")})):
        ax.plot(steps, [r.get(name) for r in sampled], "--", color=f"C{i + 1}", lw=1, label=name)
    points = [(r["step"], r["kl"]) for r in rows if isinstance(r.get("kl"), (int, float))]
    if points:
        kl.plot(*zip(*points, strict=False), "-", color="C3", lw=1, label="kl")
    return _save_reward_axes(plt, fig, (ax, kl), "KL to the start", png_path)


def realised_shares(data_stats: dict) -> dict:
    """Flat `share/examples/<source>` and `share/tokens/<source>` metrics (what the mixture really gave)."""
    return {f"share/{kind}/{source}": value
            for kind, key in (("examples", "example_share"), ("tokens", "token_share"))
            for source, value in data_stats[key].items()}


def by_source(row: dict, source_names: list[str]) -> dict:
    """Turns the step's per-source arrays (bandit mixing) into `train_loss/<source>` (mean loss per token)
    and `train_tokens/<source>` scalars; a source with no tokens in the step has no loss entry."""
    sums, tokens = row.pop("source_loss_sum", None), row.pop("source_tokens", None)
    if sums is None:
        return row
    for name, loss_sum, count in zip(source_names, sums.tolist(), tokens.tolist(), strict=False):
        row[f"train_tokens/{name}"] = count
        if count > 0:
            row[f"train_loss/{name}"] = loss_sum / count
    return row


def plot_mixing(rows: list[dict], png_path: str) -> str | None:
    """Each source's sampling weight over the steps (solid) and its realised token share so far (dashed);
    None when the run logged no weights (weights are logged by bandit mixing)."""
    names = list(dict.fromkeys(k.split("/", 1)[1] for r in rows for k in r if k.startswith("weight/")))
    if not names:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(names):
        color = f"C{i % 10}"
        for key, style, label in ((f"weight/{name}", "-", name), (f"share/tokens/{name}", "--", None)):
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points, strict=False), style, color=color, label=label, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("sampling weight (dashed: realised token share)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def expert_load(row: dict) -> dict:
    """A mixture of experts' step load ([sparse layers, experts] shares of each layer's routing choices) as
    JSON: `expert_load` (a list per sparse layer), each layer's largest and smallest expert share
    (`expert_share_max`, `expert_share_min`; 1/experts both when balanced), and the extremes over the layers
    as TensorBoard scalars (`experts/max_share`, `experts/min_share`)."""
    load = row.pop("expert_load", None)
    if load is None:
        return row
    load = np.asarray(load, np.float64)
    row.update(expert_load=load.round(5).tolist(), expert_share_max=load.max(-1).round(5).tolist(),
               expert_share_min=load.min(-1).round(5).tolist())
    row.update({"experts/max_share": float(load.max()), "experts/min_share": float(load.min())})
    return row


def plot_experts(rows: list[dict], png_path: str) -> str | None:
    """A heat map of each expert's share of its layer's routing choices (sparse layers down, experts across),
    the mean over the run's logged steps; None when the run logged no expert load (no mixture of experts)."""
    loads = [r["expert_load"] for r in rows if isinstance(r.get("expert_load"), list)]
    if not loads:
        return None
    mean = np.mean(np.asarray(loads, np.float64), axis=0)
    plt = _pyplot()
    layers, experts = mean.shape
    fig, ax = plt.subplots(figsize=(min(16, 3 + experts * 0.25), min(12, 1.5 + layers * 0.3)))
    image = ax.imshow(mean, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=f"share of the layer's choices (balanced: 1/{experts} = {1 / experts:.3g})")
    ax.set_xlabel("expert")
    ax.set_ylabel("sparse layer")
    ax.set_title(f"expert load, mean over {len(loads)} logged steps")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path

"""The demo's files: the curves as CSV and PNG, and the adaptive rate's lr_t over training."""

from __future__ import annotations

import csv
from pathlib import Path

CURVES_CSV = "curves.csv"
RATES_CSV = "adaptive_rate.csv"
CURVES_PNG = "curves.png"
RATES_PNG = "adaptive_rate.png"

_STYLES = ["o", "s", "^", "v", "D", "P", "X", "*"]


def write_all(demo, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [write_curves_csv(demo, out / CURVES_CSV), write_curves_png(demo, out / CURVES_PNG)]
    adaptive = [r for r in demo.results if r.strategy.kernel == "adaptive_sgd"]
    if adaptive:
        files += [write_rates_csv(adaptive, out / RATES_CSV),
                  write_rates_png(demo, adaptive, out / RATES_PNG)]
    return files


def write_curves_csv(demo, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["strategy", "epoch", "steps", "train_loss", "train_accuracy", "test_loss",
                    "test_accuracy"])
        for r in demo.results:
            per_epoch = r.steps // demo.epochs
            for epoch, row in enumerate(zip(r.train_loss, r.train_acc, r.test_loss, r.test_acc)):
                w.writerow([r.strategy.key, epoch, epoch * per_epoch] + [f"{v:.6g}" for v in row])
    return path


def write_rates_csv(adaptive, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["strategy", "step", "lr_t"])
        for r in adaptive:
            for step, rate in enumerate(r.rates, 1):
                w.writerow([r.strategy.key, step, f"{rate:.6g}"])
    return path


def _figure(width, height):
    # A Figure of its own (Agg canvas), so that pyplot's global state and backend are untouched.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def write_curves_png(demo, path: Path) -> Path:
    fig = _figure(11, 4.4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = list(range(demo.epochs + 1))
    for i, r in enumerate(demo.results):
        style = dict(marker=_STYLES[i % len(_STYLES)], markersize=4, linewidth=1.6, label=r.strategy.label)
        loss_ax.plot(epochs, r.train_loss, **style)
        acc_ax.plot(epochs, [100 * a for a in r.test_acc], **style)
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss (cross-entropy, log scale)")
    loss_ax.set_title("Training loss")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.set_title(f"Test accuracy ({demo.n_test} held-out digits)")
    acc_ax.set_ylim(0, 100)
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.set_xticks(epochs)
    acc_ax.legend(loc="lower right", fontsize=9)
    fig.suptitle(f"The seed's model on scikit-learn's digits ({demo.framework} forward/backward, "
                 f"fusedopt updates, seed {demo.seed})")
    fig.savefig(path)
    return path


def write_rates_png(demo, adaptive, path: Path) -> Path:
    fig = _figure(8, 4.2)
    ax = fig.subplots()
    colors = {r.strategy.key: f"C{i}" for i, r in enumerate(demo.results)}
    for r in adaptive:
        per_epoch = r.steps / demo.epochs
        x = [(k + 1) / per_epoch for k in range(len(r.rates))]
        ax.plot(x, r.rates, linewidth=1.2, color=colors[r.strategy.key],
                label=f"{r.strategy.label} (lr0 = {r.strategy.lr:g})")
        ax.axhline(r.strategy.lr, color=colors[r.strategy.key], linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("rate of the step, lr_t = lr0 / (1 + ||g||^2)")
    ax.set_title("The adaptive rate over training (dashed: lr0)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    fig.savefig(path)
    return path

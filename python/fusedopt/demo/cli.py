"""python -m fusedopt demo [options]: the command line and the printed table."""

from __future__ import annotations

import argparse
import sys

from fusedopt.demo import strategies

DESCRIPTION = """Trains the seed's model (Dense 128 ReLU -> Dense 10, cross-entropy) on
scikit-learn's handwritten digits with each training strategy, from the same initial weights,
every update through fusedopt's kernels; prints a table and writes the curves (CSV, PNG)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fusedopt demo", description=DESCRIPTION)
    p.add_argument("--epochs", type=int, default=10, help="passes over the training set (default 10)")
    p.add_argument("--seed", type=int, default=0, help="initial weights, split and batch order (default 0)")
    p.add_argument("--out", default="fusedopt-demo", metavar="DIR",
                   help="folder for curves.csv, curves.png, adaptive_rate.csv/.png (default ./fusedopt-demo)")
    p.add_argument("--framework", choices=("numpy", "torch"), default="numpy",
                   help="forward and backward in NumPy (default) or torch autograd; the updates are "
                        "fusedopt's either way")
    p.add_argument("--strategies", default=None, metavar="A,B",
                   help="a comma-separated subset of: " + ", ".join(s.key for s in strategies.STRATEGIES))
    p.add_argument("--batch-size", type=int, default=strategies.BATCH,
                   help=f"mini-batch size (default {strategies.BATCH}; full-batch GD takes the whole set)")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    return p


def format_table(demo) -> str:
    head = ["strategy", "settings", "batch", "steps", "train loss", "test acc", "update µs/step",
            "update share"]
    rows = [[r.strategy.label, r.strategy.settings(), str(r.batch_size), str(r.steps),
             f"{r.train_loss[-1]:.4f}", f"{100 * r.test_acc[-1]:.1f}%",
             f"{r.update_us_per_step:.1f}", f"{100 * r.update_share:.1f}%"] for r in demo.results]
    widths = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]
    left = {0, 1}

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from fusedopt.demo import data, train

    missing = data.missing_extra()
    if missing:
        print(f"python -m fusedopt demo: {missing}", file=sys.stderr)
        return 2
    keys = None if args.strategies is None else [k.strip() for k in args.strategies.split(",") if k.strip()]
    try:
        demo = train.run(epochs=args.epochs, seed=args.seed, strategies_keys=keys,
                         framework=args.framework, out=args.out, batch_size=args.batch_size,
                         progress=not args.no_progress)
    except (ValueError, ImportError) as exc:
        print(f"python -m fusedopt demo: {exc}", file=sys.stderr)
        return 2
    print(f"The seed's model on the digits: {demo.n_train} training and {demo.n_test} test images, "
          f"{demo.epochs} epochs, seed {demo.seed}, forward/backward in {demo.framework}, updates "
          f"by fusedopt")
    print(format_table(demo))
    print("update µs/step: the median time of a step's fusedopt call; update share: the median "
          "over the steps of that time over the whole step's (forward, backward and update)")
    for path in demo.files:
        print(f"wrote {path}")
    print(f"took {demo.seconds:.1f} s")
    return 0

"""The training loop: every strategy from the same initial weights, on the same batches."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusedopt.demo import data, model, strategies
from fusedopt.demo.strategies import Strategy


@dataclass
class StrategyResult:
    strategy: Strategy
    batch_size: int
    train_loss: list[float] = field(default_factory=list)  # after epoch 0 (initial), 1, ...
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # the rate of every step
    steps: int = 0
    update_seconds: list[float] = field(default_factory=list)  # each step's time in fusedopt
    step_seconds: list[float] = field(default_factory=list)  # forward + backward + update

    # Medians over the steps: on a shared machine a few steps take many times longer than
    # the rest (a first call, a busy neighbour), and a mean would mostly report those.
    @property
    def update_us_per_step(self) -> float:
        return 1e6 * float(np.median(self.update_seconds)) if self.steps else 0.0

    @property
    def update_share(self) -> float:
        """The median over the steps of (time in fusedopt) / (the whole step's time)."""
        if not self.steps:
            return 0.0
        return float(np.median(np.divide(self.update_seconds, self.step_seconds)))


@dataclass
class DemoResult:
    results: list[StrategyResult]
    framework: str
    epochs: int
    seed: int
    n_train: int
    n_test: int
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)


class Progress:
    """A text progress bar on stderr: redrawn in place on a terminal; elsewhere (a pipe,
    a log file, a test) one line per finished strategy."""

    def __init__(self, total_steps: int, stream=None, width: int = 30):
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.done, self.width = max(total_steps, 1), 0, width
        self._drawn = 0.0

    def advance(self, label: str, epoch: int, epochs: int) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.tty and (now - self._drawn > 0.1 or self.done == self.total):
            self._drawn = now
            filled = self.width * self.done // self.total
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r[{bar}] {100 * self.done // self.total:3d}%  {label:<24} "
                              f"epoch {epoch}/{epochs}")
            self.stream.flush()

    def finished(self, index: int, count: int, result: StrategyResult, seconds: float) -> None:
        steps = f"{result.steps} step" + ("" if result.steps == 1 else "s")
        line = (f"demo [{index}/{count}] {result.strategy.label}: {steps}, "
                f"test accuracy {100 * result.test_acc[-1]:.1f}%, {seconds:.1f} s")
        if self.tty:
            self.stream.write("\r" + " " * (self.width + 50) + "\r")
        self.stream.write(line + "\n")
        self.stream.flush()


def _record(result: StrategyResult, net, sets) -> None:
    (x_train, y_train), (x_test, y_test) = sets
    loss, acc = net.evaluate(x_train, y_train)
    result.train_loss.append(loss)
    result.train_acc.append(acc)
    loss, acc = net.evaluate(x_test, y_test)
    result.test_loss.append(loss)
    result.test_acc.append(acc)


def train_one(strategy: Strategy, digits: data.Digits, init, *, framework: str, epochs: int,
              seed: int, batch_size: int, progress: Progress | None = None) -> StrategyResult:
    """Trains a fresh copy of the model from ``init`` with one strategy."""
    net = model.make_model(framework, init, strategy.storage)
    n = len(digits.y_train)
    batch = strategy.batch_size(n, batch_size)
    result = StrategyResult(strategy, batch)
    convert = getattr(net, "as_inputs", lambda x, y: (x, y))
    sets = (convert(digits.x_train, digits.y_train), convert(digits.x_test, digits.y_test))
    x_all, y_all = sets[0]
    update = strategy.updater(net.params, net.zeros_like)
    order = np.random.default_rng(seed)  # the same batches, in the same order, for every strategy
    _record(result, net, sets)
    clock = time.perf_counter
    for epoch in range(1, epochs + 1):
        perm = order.permutation(n)
        for start in range(0, n, batch):
            if batch == n:
                xb, yb = x_all, y_all
            else:
                idx = perm[start:start + batch]
                if framework == "torch":
                    idx = net._torch.from_numpy(idx)
                xb, yb = x_all[idx], y_all[idx]
            t0 = clock()
            _, grads = net.loss_and_grads(xb, yb)
            t1 = clock()
            rate = update(grads)
            t2 = clock()
            result.update_seconds.append(t2 - t1)
            result.step_seconds.append(t2 - t0)
            result.rates.append(rate)
            result.steps += 1
            if progress is not None:
                progress.advance(strategy.label, epoch, epochs)
        _record(result, net, sets)
    return result


def run(*, epochs: int = 10, seed: int = 0, strategies_keys=None, framework: str = "numpy",
        out=None, batch_size: int = strategies.BATCH, progress=True) -> DemoResult:
    """Trains the seed's model with each strategy and, where ``out`` is a folder, writes
    the curves (CSV and PNG) and the adaptive rate's plot there. ``progress``: True for a
    bar on stderr, False for none, or a stream to write it to."""
    from fusedopt.demo import plots

    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    missing = data.missing_extra()
    if missing:
        raise ImportError(missing)
    chosen = strategies.select(strategies_keys)
    started = time.perf_counter()
    digits = data.load_digits(seed)
    n = len(digits.y_train)
    init = model.init_params(digits.x_train.shape[1], seed)
    total = sum(epochs * math.ceil(n / s.batch_size(n, batch_size)) for s in chosen)
    bar = None
    if progress is not False:
        bar = Progress(total, None if progress is True else progress)
    demo = DemoResult([], framework, epochs, seed, n, len(digits.y_test))
    for i, strategy in enumerate(chosen, 1):
        t0 = time.perf_counter()
        result = train_one(strategy, digits, init, framework=framework, epochs=epochs, seed=seed,
                           batch_size=batch_size, progress=bar)
        demo.results.append(result)
        if bar is not None:
            bar.finished(i, len(chosen), result, time.perf_counter() - t0)
    if out is not None:
        demo.files = plots.write_all(demo, Path(out))
    demo.seconds = time.perf_counter() - started
    return demo

"""fusedopt.keras against Keras's own optimizers, on the seed's model (torch backend).

The seed's model: Dense(128, relu) on 100 inputs, then Dense(10), cross-entropy. Each pair
of optimizers trains it from the same weights on the same batches (no shuffling, float32),
and the final weights must agree within 1e-4 relative: the rules are the same, only the
order of a few float32 roundings differs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

if "keras" not in sys.modules:
    # Keras reads its backend once, at its first import; this module needs torch's.
    os.environ["KERAS_BACKEND"] = "torch"
pytest.importorskip("torch", reason="PyTorch is not installed; fusedopt.keras runs on Keras's torch backend")
keras = pytest.importorskip("keras", reason='Keras 3 is not installed (pip install "fusedopt[keras]")')
if keras.backend.backend() != "torch":
    pytest.skip(f"keras was imported with the {keras.backend.backend()!r} backend before this module",
                allow_module_level=True)

import fusedopt  # noqa: E402
import fusedopt.keras  # noqa: E402

pytestmark = [
    # Keras's Variable.numpy() calls np.array(variable), whose __array__ takes no copy
    # keyword; NumPy 2 warns about it. Keras's, not ours, and harmless here.
    pytest.mark.filterwarnings(r"ignore:__array__ implementation doesn't accept a copy keyword"
                               r":DeprecationWarning"),
]

RTOL = 1e-4


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 100)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    return x, y


def _seed_model():
    return keras.Sequential([keras.Input((100,)), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(10)])


@pytest.fixture(scope="module")
def initial_weights():
    keras.utils.set_random_seed(1234)
    return _seed_model().get_weights()


def _train(optimizer, weights, epochs=3, batch_size=32):
    x, y = _data()
    model = _seed_model()
    model.set_weights(weights)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0)
    return model.get_weights(), history.history["loss"]


def _assert_close(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.dtype == np.float32 and a.shape == b.shape
        relative = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert relative <= RTOL, relative
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * float(np.abs(b).max()))


PAIRS = {
    "momentum": (lambda: fusedopt.keras.SGD(learning_rate=0.01, momentum=0.9),
                 lambda: keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)),
    "nesterov": (lambda: fusedopt.keras.SGD(learning_rate=0.01, momentum=0.9, nesterov=True),
                 lambda: keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, nesterov=True)),
    "plain-sgd": (lambda: fusedopt.keras.SGD(learning_rate=0.05),
                  lambda: keras.optimizers.SGD(learning_rate=0.05)),
    "adam": (lambda: fusedopt.keras.Adam(learning_rate=0.001),
             lambda: keras.optimizers.Adam(learning_rate=0.001)),
    # Where epsilon is not negligible beside sqrt(v), its placement decides the result.
    "adam-epsilon": (lambda: fusedopt.keras.Adam(learning_rate=0.001, epsilon=0.01),
                     lambda: keras.optimizers.Adam(learning_rate=0.001, epsilon=0.01)),
    "amsgrad": (lambda: fusedopt.keras.Adam(learning_rate=0.001, amsgrad=True),
                lambda: keras.optimizers.Adam(learning_rate=0.001, amsgrad=True)),
    "schedule": (lambda: fusedopt.keras.SGD(learning_rate=_schedule(), momentum=0.9),
                 lambda: keras.optimizers.SGD(learning_rate=_schedule(), momentum=0.9)),
    "weight-decay": (lambda: fusedopt.keras.Adam(learning_rate=0.001, weight_decay=0.01),
                     lambda: keras.optimizers.Adam(learning_rate=0.001, weight_decay=0.01)),
}


def _schedule():
    return keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=4, decay_rate=0.5)


@pytest.mark.parametrize("case", list(PAIRS))
def test_same_weights_as_keras(case, initial_weights):
    ours, theirs = PAIRS[case]
    w_ours, loss_ours = _train(ours(), initial_weights)
    w_theirs, loss_theirs = _train(theirs(), initial_weights)
    assert loss_ours[-1] < loss_ours[0]  # it trained
    np.testing.assert_allclose(loss_ours, loss_theirs, rtol=RTOL)
    _assert_close(w_ours, w_theirs)


def test_schedule_is_read_every_step(initial_weights):
    # A rate that halves every 4 steps would, if read once, leave the weights where a
    # constant 0.05 takes them; the schedule's run must differ from the constant one.
    w_schedule, _ = _train(PAIRS["schedule"][0](), initial_weights)
    w_constant, _ = _train(fusedopt.keras.SGD(learning_rate=0.05, momentum=0.9), initial_weights)
    assert not np.allclose(w_schedule[0], w_constant[0], rtol=1e-3)


@pytest.mark.parametrize("kernel, make", [
    ("sgd_", lambda: fusedopt.keras.SGD(learning_rate=0.01, momentum=0.9)),
    ("adam_", lambda: fusedopt.keras.Adam()),
])
def test_one_fused_call_per_step(kernel, make, initial_weights, monkeypatch):
    calls = []
    real = getattr(fusedopt, kernel)

    def counting(params, grads, *args, **kwargs):
        calls.append((len(params), len(grads), [type(p).__module__.split(".")[0] for p in params]))
        return real(params, grads, *args, **kwargs)

    monkeypatch.setattr(fusedopt, kernel, counting)
    _train(make(), initial_weights, epochs=1, batch_size=64)  # 256 samples: 4 steps
    assert calls == [(4, 4, ["torch"] * 4)] * 4


def test_config_round_trip():
    opt = fusedopt.keras.SGD(learning_rate=0.02, momentum=0.5, nesterov=True)
    again = fusedopt.keras.SGD.from_config(opt.get_config())
    assert (again.momentum, again.nesterov) == (0.5, True)
    assert float(again.learning_rate) == pytest.approx(0.02)
    adam = fusedopt.keras.Adam.from_config(fusedopt.keras.Adam(epsilon=1e-6, amsgrad=True).get_config())
    assert (adam.epsilon, adam.amsgrad) == (1e-6, True)
    with pytest.raises(ValueError, match="momentum"):
        fusedopt.keras.SGD(momentum=1.5)


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND="torch")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)


def test_import_fusedopt_does_not_import_keras():
    done = _python("import sys, fusedopt; print('keras' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_missing_keras_says_how_to_install():
    done = _python("import sys; sys.modules['keras'] = None; import fusedopt.keras")
    assert done.returncode != 0
    assert 'pip install "fusedopt[keras]"' in done.stderr

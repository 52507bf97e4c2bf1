"""The rules, one module each: everything Python knows of a rule, in one place.

A rule's module (``fusedopt/rules/<rule>.py``) holds:

* ``coefficients(fn, **hyperparameters)``: the hyperparameters checked and the per-step
  coefficients computed in double (a NamedTuple whose fields are those of the rule's
  ``FUSEDOPT_<RULE>_RULE`` in ``csrc/math/<rule>.h``, which the modules read by name);
* ``exact(xp, p, g, states, c)``: the rule in the kernel's operation order, at the
  arrays' precision (the bitwise reference), mirroring ``csrc/math/<rule>.h`` line by line;
  it sees one tensor at a time, so a rule with per-tensor norms (LAMB) takes them there;
* ``float64(xp, p, g, states, h)``: the textbook formula from the raw hyperparameters;
* ``RULE``: a :class:`Rule` naming its public functions (:class:`Kernel`) and the
  examples that ``verify``, the smoke test, the benchmark and the tests run.

Everything else follows from ``RULE``: ``fusedopt.<rule>_`` and its reference
(fusedopt._kernels, fusedopt.reference), the ``fusedopt.optim`` class, the cases of
``python -m fusedopt verify`` and of the benchmark. A module here is found by its file:
adding one registers it (its C++ side registers with one line in csrc/common/steps.h).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from fusedopt._coeffs import state_shapes

REQUIRED = object()  # a keyword argument without a default (``step`` of most rules)


@dataclass(frozen=True)
class Kernel:
    """One public function of a rule (Adam's rule has two: ``adam_`` and ``adamw_``)."""

    name: str  # "adam_"
    keywords: dict  # keyword-only arguments and their defaults (REQUIRED: none), in order
    doc: str
    fixed: dict = field(default_factory=dict)  # passed to coefficients(), not by the caller
    optimizer: str | None = None  # the fusedopt.optim class of the same rule, if any
    optimizer_defaults: dict | None = None  # its defaults where they differ from keywords
    adaptive: bool = False  # SGD at lr0 / (1 + ||g||^2) (fusedopt._dispatch)
    # Cases run by verify, the wheel smoke test and the tests: name -> hyperparameters.
    examples: dict = field(default_factory=dict)

    @property
    def takes_step(self) -> bool:
        return "step" in self.keywords


@dataclass(frozen=True)
class Rule:
    name: str  # as the modules know it: "adam"
    coefficients: Callable  # (fn, **hyperparameters) -> coefficients
    exact: Callable
    float64: Callable
    states: tuple  # the state arguments, in rule order
    # States some flags leave out: name -> (the coefficients' flag that needs it, the
    # condition as a message says it, e.g. "when amsgrad=True").
    optional_states: dict = field(default_factory=dict)
    kernels: tuple = ()
    # States that never go negative (squares, norms): the tests' inputs keep them so.
    square_states: frozenset = frozenset()
    # A rule with a per-tensor trust ratio (LAMB; FUSEDOPT_FOR_EACH_TRUST_STEP in
    # csrc/common/steps.h): the kernel runs two passes, the second reading the param and
    # the states again (the benchmark counts those bytes), and its norms are taken from the
    # states as stored, so its ``exact`` gets ``as_stored(k, x)``: state k's values ``x``
    # rounded to the state's storage, as the kernel reads them back.
    trust_ratio: bool = False
    # How the states are shaped, as the reader checks them (csrc/bindings/reader.h):
    # "same" (like their params: the elementwise rules) or "factored" (Adafactor's row and
    # column factors, or a full state, per param; None where a param keeps no such state).
    state_layout: str = "same"

    @property
    def reads_back(self) -> bool:
        """Whether ``exact`` takes ``as_stored``: a later pass of the kernel reads the states
        back as stored (LAMB's second pass; Adafactor's update, from its factors)."""
        return self.trust_ratio or self.state_layout == "factored"

    def state_shapes(self, shape) -> tuple:
        """The shapes of the states of a param of ``shape``, in rule order (None where it
        keeps no such state), as the reader has them."""
        if self.state_layout == "same":
            return (tuple(shape),) * len(self.states)
        return state_shapes(self.state_layout, shape)[:len(self.states)]

    def states_for(self, coeffs) -> tuple:
        """The state arguments these coefficients' flags read and write, in rule order."""
        return tuple(s for s in self.states
                     if s not in self.optional_states or getattr(coeffs, self.optional_states[s][0]))


def _discover() -> dict[str, Rule]:
    found: dict[str, Rule] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        rule = module.RULE
        found[rule.name] = rule
    return found


RULES: dict[str, Rule] = _discover()
KERNELS: dict[str, tuple[Rule, Kernel]] = {k.name: (r, k) for r in RULES.values() for k in r.kernels}


def kernel(name: str) -> tuple[Rule, Kernel]:
    """(rule, kernel) of a public function's name, e.g. "adamw_"."""
    return KERNELS[name]


def examples(*, factored: bool = True) -> list[tuple[str, str, dict[str, Any], list[str], bool]]:
    """Every rule's example cases, for verify, the wheel smoke test and the tests: (case
    name, public function, hyperparameters, the state arguments they use, whether the
    function takes step=). ``factored=False`` leaves out the rules whose states are not
    shaped like their params (Adafactor), for callers that make such states."""
    out = []
    for rule in RULES.values():
        if not factored and rule.state_layout != "same":
            continue
        for k in rule.kernels:
            defaults = {n: v for n, v in k.keywords.items() if v is not REQUIRED}
            for case, hyper in k.examples.items():
                step = {"step": 1} if k.takes_step else {}
                coeffs = rule.coefficients(k.name, **k.fixed, **{**defaults, **hyper, **step})
                out.append((case, k.name, dict(hyper), list(rule.states_for(coeffs)), k.takes_step))
    return out

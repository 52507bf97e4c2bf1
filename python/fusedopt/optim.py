"""Stateful optimizers that own their state arrays and step with one fused call.

    opt = fusedopt.optim.Adam(params, lr=1e-3)
    for ...:
        opt.step(grads)          # grads: one array per param, same order

``params`` is a list of arrays (NumPy, CuPy, or torch tensors) that the optimizer updates
in place; the states (moments, buffers) are arrays of the same shapes created here.
``state_dict()`` returns copies; ``load_state_dict()`` checks everything before it writes.
A step that raises (bad gradients, say) changes nothing and does not advance the step
count. Two threads stepping one optimizer are serialised by a lock. With
``skip_if_nonfinite=True`` a step whose gradients hold NaN or inf writes nothing, returns a
status saying so (a capturable step returns None: see :class:`Adam`), and does not advance
the step count (loss-scaling overflow skip).

Loss scaling and clipping, as the functional kernels take them: ``max_grad_norm=`` (made
with the optimizer) clips by the L2 norm of all the step's gradients inside the update, and
``step(grads, grad_scale=..., found_inf=...)`` unscales the gradients as the update reads
them and writes nothing (and does not count the step) when ``found_inf`` is set. A step
that clips returns a :class:`fusedopt.StepStatus` whose ``grad_norm`` is the norm before
clipping.

Params may be float32, float64, bfloat16 or float16 (fusedopt's storage rules: see the
functional kernels). ``state_dtype=`` sets the states' storage: float32 or bfloat16 for
every params' dtype but float64 (float64 states only), by default the params' own dtype for
float32 and float64 params and float32 for bfloat16 and float16 params. Arithmetic is
float32 either way (float64 for float64 params); bfloat16 states halve their memory and
traffic at the cost of rounding each moment to 8 bits of mantissa every step.

``rounding="stochastic"`` (and ``state_rounding="stochastic"``) round the bfloat16 and float16
params (states) a step writes stochastically, with random bits from ``seed=`` and the step
count (see the functional kernels): a run has the same bits at any thread count and on any
instruction set, and a run from a state_dict goes on with the bits of one that never stopped.

``master_weights="float32"`` keeps a float32 master of each bfloat16 or float16 param, which
the steps update (the params are written rounded from it, as ``rounding`` says), and
``master_weights="remainders"`` keeps an int16 remainder of each bfloat16 param instead,
which with the param is an exact float32 master (see the functional kernels'
``master_params`` and ``param_remainders``). The masters are made from the params at the
first step, and ``state_dict`` carries them.

Hyperparameters are read-only attributes except ``lr``, which may be set between steps
(learning-rate schedules).

``Adam(..., capturable=True)`` and ``AdamW(..., capturable=True)`` (device arrays only)
keep the step count on the device, with the coefficients of every step in a table there,
so that a step captured in a CUDA graph replays as the step it is, with the bits of the
same step taken eagerly (see :class:`Adam`).

On device arrays (CuPy arrays, torch CUDA tensors) an optimizer keeps what its first step
read of its params and states; later steps check the gradients, and what the held arrays
can change in place (shapes; every fact of a torch tensor), and check the whole call again
if anything changed. Its states are CuPy arrays, and everything it does on the device runs
on the current stream of the params' library: torch's for torch tensors, else CuPy's. As
with torch's own tensors, the states' memory belongs to the stream current when the
optimizer was made: if steps run on another stream, wait for it before dropping the
optimizer.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from fusedopt import _arrays, _coeffs, _dispatch, _kernels, _native, _storage, cuda, rules


class Optimizer:
    """Base class: owns params, states and the step count. A subclass names its functional
    kernel (``_kernel_name``); the rule's description (fusedopt/rules/) gives the rest: the
    defaults, the states and whether the kernel takes a step count."""

    _kernel_name: str | None = None  # e.g. "adam_"
    _extra_defaults: dict[str, Any] = {}  # hyperparameters of the class, not the kernel
    _capturable_rule: str | None = None  # the CUDA module's rule, where capturable=True works
    _kernel: Any = None  # set from _kernel_name: the functional kernel, e.g. fusedopt.adam_
    _takes_step = True
    _defaults: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "_kernel_name" not in cls.__dict__:
            return
        rule, kernel = rules.kernel(cls._kernel_name)
        cls._kernel = staticmethod(_kernels.KERNELS[kernel.name])
        cls._rule_spec, cls._kernel_spec = rule, kernel
        cls._takes_step = kernel.takes_step
        defaults = kernel.optimizer_defaults or {k: v for k, v in kernel.keywords.items()
                                                 if k != "step"}
        cls._defaults = {**defaults, **cls._extra_defaults}

    def __init__(self, params, *, backend: str = "auto", skip_if_nonfinite: bool = False,
                 capturable: bool = False, state_dtype=None, max_grad_norm=None,
                 rounding: str = "nearest", state_rounding: str = "nearest", seed: int = 0,
                 master_weights: str | None = None, **hyper):
        name = type(self).__name__
        self._skip = _coeffs.flag(name, "skip_if_nonfinite", skip_if_nonfinite)
        capturable = _coeffs.flag(name, "capturable", capturable)
        self._max_grad_norm = None
        if max_grad_norm is not None:
            if capturable:
                raise TypeError(f"{name}: max_grad_norm needs the norm on the host every step, "
                                "which a captured step cannot have; clip before the step instead")
            self._max_grad_norm = _coeffs.grad_scaling(name, None, None, max_grad_norm, None).max_grad_norm
        _coeffs.rounding(name, rounding, state_rounding, seed, 1)  # checked here, used each step
        self._rounding = dict(rounding=rounding, state_rounding=state_rounding,
                              seed=_coeffs.seed_value(name, seed))
        if capturable and (rounding != "nearest" or state_rounding != "nearest"):
            raise TypeError(f"{name}: stochastic rounding keys its random bits by the step "
                            "count, which a captured step keeps on the device; use "
                            "rounding='nearest' with capturable=True")
        self._master = _master_form(name, master_weights, capturable, rounding,
                                    self._rule_spec.state_layout)
        if capturable and self._capturable_rule is None:
            if self._takes_step:
                why = (f"{name}'s coefficients change every step and are computed on the host, so "
                       "a captured step would replay the coefficients of the step it captured")
            else:
                why = (f"{name}'s coefficients are the same every step (SGD's from its second), so "
                       "its steps can be captured as they are")
            raise TypeError(f"{name}: capturable=True is for Adam and AdamW, whose coefficients of "
                            f"every step the device keeps in a table. {why}")
        if not isinstance(params, (list, tuple)):
            params = [params]
        if len(params) == 0:
            raise ValueError(f"{name}: params is empty; pass the arrays to optimize")
        unknown = set(hyper) - set(self._defaults)
        if unknown:
            raise TypeError(f"{name}: unexpected argument(s) {sorted(unknown)}")
        self._hyper = self._normalized(name, {**self._defaults, **hyper})
        self._backend = _dispatch.check_backend(name, backend)
        self._params = list(params)
        self._step = 0
        self._lock = threading.Lock()
        # The kernel validates the hyperparameters on an empty call (nothing is written).
        self._call([], [], {n: [] for n in self._state_names()}, step=1)
        prep = _arrays.prepare(name, self._params, None, written_only=True)
        # Work on the states (made here, copied by state_dict, written by load_state_dict)
        # runs where the steps do: on torch's current stream for torch CUDA params.
        self._torch_device = prep.torch_device
        self._state_dtype = _state_dtype(name, prep, state_dtype)
        if self._master is not None:
            _check_master_params(name, self._master, prep)
        # The masters (fusedopt._coeffs.Masters' arrays), made from the params at the first
        # step; their form's kernel argument, with the arrays a list like the params.
        self._views, self._xp = prep.params, prep.xp
        self._masters = None
        with cuda.params_stream(self._torch_device):
            # One shape per param and state: the rule's state layout (None: not kept).
            shapes = [self._rule_spec.state_shapes(p.shape) for p in prep.params]
            rule_states = self._rule_spec.states
            self._states = {
                n: _carve(prep.xp, prep.params, self._initial_value(n), self._state_dtype,
                          shapes=[s[rule_states.index(n)] for s in shapes])
                for n in self._state_names()
            }
        # The states are new arrays, so only params can clash with each other.
        if prep.device == "cuda":
            # Steps on device arrays then check the params and states in full once, and
            # the grads (and what can change in place) each step: _native.DeviceParams.
            self._params = _native.DeviceParams(self._params)
        self._schedule = self._make_schedule(prep) if capturable else None

    # --- subclass hooks ---------------------------------------------------------------
    def _state_names(self) -> list[str]:
        """The states the hyperparameters' flags use (the rule's description says which)."""
        kernel = self._kernel_spec
        hyper = {k: v for k, v in kernel.keywords.items() if v is not rules.REQUIRED}
        hyper.update((k, v) for k, v in self._hyper.items() if k in kernel.keywords)
        if self._takes_step:
            hyper["step"] = 1
        coeffs = self._rule_spec.coefficients(kernel.name, **kernel.fixed, **hyper)
        return list(self._rule_spec.states_for(coeffs))

    def _initial_value(self, name: str) -> float:
        return 0.0

    def _normalized(self, name: str, hyper: dict) -> dict:
        """``hyper`` with lr_factors (where the class takes it) as _coeffs.lr_factors
        gives it: checked, a read-only array (shown as a tuple: _shown), every rate finite."""
        if "lr_factors" in hyper:
            factors = _coeffs.lr_factors(name, hyper["lr_factors"])
            _coeffs.check_rates(name, hyper["lr"], factors)
            hyper = dict(hyper, lr_factors=factors)
        return hyper

    def _shown(self) -> dict:
        """The hyperparameters as the public sees them: lr_factors as a tuple of floats (the
        optimizer's own array stays its own; dicts of them compare)."""
        factors = self._hyper.get("lr_factors")
        if factors is None:
            return dict(self._hyper)
        return dict(self._hyper, lr_factors=tuple(factors.tolist()))

    def _table(self, hyper):
        """(the coefficients of step 1, the table of every step's numbers) for the
        hyperparameters ``hyper``: fusedopt._coeffs."""
        raise NotImplementedError

    # --- capturable steps -------------------------------------------------------------
    def _make_schedule(self, prep):
        name = type(self).__name__
        if prep.device != "cuda":
            raise ValueError(f"{name}: capturable=True is for device arrays (CuPy arrays, torch "
                             "CUDA tensors), whose steps a CUDA graph can capture; these "
                             "params are host arrays")
        if self._backend == "reference":
            raise ValueError(f"{name}: capturable=True needs the CUDA kernels; the CuPy "
                             "reference (backend='reference') computes every step on the host")
        reason = _native.unavailable(prep.device)
        if reason is not None:
            raise RuntimeError(f"{name}: capturable=True needs the CUDA kernels: {reason}")
        self._first_coeffs, table = self._table(self._hyper)
        return cuda.StepSchedule(self._capturable_rule, table, device=prep.params[0].data.device_id,
                                 torch_device=self._torch_device)

    def _load_schedule(self, name: str, step: int) -> None:
        """load_state_dict's part for a capturable optimizer: the table of the (adopted)
        hyperparameters and the step count, into the device memory that graphs captured
        before read. Those keep their kernel, which the flags chose, and the table's
        length: hyperparameters that change either are refused, with nothing written."""
        first, table = self._table(self._hyper)
        flags = lambda c: c[len(c.numbers):]  # noqa: E731
        if flags(first) != flags(self._first_coeffs) or table.shape[0] != self._schedule.table.shape[0]:
            raise ValueError(f"{name}.load_state_dict: a capturable optimizer takes only "
                             "hyperparameters that keep its kernel (maximize, weight decay on or "
                             "off) and the length of its coefficient table (betas, the length of "
                             "lr_factors); make a new optimizer for these (and capture its step "
                             "again)")
        self._schedule.rewrite(table)
        self._schedule.steps_taken = step

    def _captured_step(self, grads):
        """A step that waits for nothing and leaves nothing per step on the host: the
        device counts the step and picks its coefficients, then the update reads them
        (cuda.StepSchedule). The arrays are checked as every step's are."""
        names = self._state_names()
        call = _dispatch.Call(self._capturable_rule, f"{type(self).__name__}.step", self._params, grads,
                              tuple(names), [self._states[n] for n in names], self._first_coeffs,
                              hyper=None)
        _dispatch.run_captured(call, self._schedule, self._skip, self._torch_device)

    # --- public -------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate; with Adam's lr_factors, the base rate they scale."""
        return self._hyper["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        _coeffs.number(type(self).__name__, "lr", value)
        _coeffs.check_rates(type(self).__name__, value, self._hyper.get("lr_factors"))
        with self._lock:
            if self._schedule is not None:
                # Into the same device memory: a graph captured before replays with it.
                self._schedule.rewrite(self._table(dict(self._hyper, lr=float(value)))[1])
            self._hyper["lr"] = float(value)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return self._shown()

    @property
    def step_count(self) -> int:
        """Steps taken so far (the next step is step_count + 1). A capturable optimizer
        keeps it on the device, and reading it waits for the steps queued there."""
        if self._schedule is not None:
            return self._schedule.steps_taken
        return self._step

    @property
    def state_dtype(self):
        """The dtype of the states (moments, buffers): see the module's note on storage."""
        return self._state_dtype

    @property
    def capturable(self) -> bool:
        return self._schedule is not None

    @property
    def max_grad_norm(self) -> float | None:
        """The norm the gradients are clipped to inside each step (None: no clipping)."""
        return self._max_grad_norm

    @property
    def params(self) -> list:
        return list(self._params)

    @property
    def master_weights(self) -> str | None:
        """None, "float32" or "remainders": see the module's note on master weights."""
        return self._master

    @property
    def masters(self) -> list | None:
        """The float32 masters or int16 remainders (live; None before the first step)."""
        return None if self._masters is None else list(self._masters)

    def _made_masters(self) -> list:
        if self._masters is None:
            views, xp = self._views, self._xp
            with cuda.params_stream(self._torch_device):
                if self._master == "float32":
                    self._masters = _carve(xp, views, 0.0, np.dtype(np.float32))
                    for m, p in zip(self._masters, views):
                        m[...] = p.astype(np.float32)
                else:  # a zero remainder: the param's value is the master
                    self._masters = _carve(xp, views, 0, np.dtype(np.int16))
        return self._masters

    @property
    def state(self) -> dict[str, list]:
        """The optimizer's state arrays by name (live, not copies)."""
        return {n: list(arrays) for n, arrays in self._states.items()}

    def step(self, grads, *, grad_scale=None, found_inf=None):
        """Takes one step with one gradient per param (a list, or one array for one param).

        ``grad_scale``: the loss scale the gradients carry (they are divided by it as the
        update reads them); ``found_inf``: when set, nothing is written and the step is not
        counted (the :class:`fusedopt.StepStatus` returned says skipped). A capturable
        optimizer returns None: whether a step with ``skip_if_nonfinite`` was skipped is on
        the device (``step_count`` does not advance)."""
        if not isinstance(grads, (list, tuple)):
            if len(self._params) != 1:
                raise TypeError(f"{type(self).__name__}.step: grads must be a list of "
                                f"{len(self._params)} arrays, one per param, got "
                                f"{type(grads).__name__}")
            grads = [grads]
        with self._lock:
            try:
                if self._schedule is not None:
                    if grad_scale is not None or found_inf is not None:
                        raise TypeError(f"{type(self).__name__}.step: a capturable step takes no "
                                        "grad_scale or found_inf (both are read on the host)")
                    return self._captured_step(list(grads))
                masters = {} if self._master is None else {_MASTER_ARGS[self._master]: self._made_masters()}
                result = self._call(self._params, list(grads), self._states, step=self._step + 1,
                                    skip_if_nonfinite=self._skip, grad_scale=grad_scale,
                                    found_inf=found_inf, max_grad_norm=self._max_grad_norm, **masters)
            finally:
                # See _native.DeviceParams: the caller's gradients are not kept alive here.
                if type(self._params) is _native.DeviceParams and self._params.batch is not None:
                    self._params.batch.drop_grads()
            if not getattr(result, "skipped", False):
                self._step += 1
        return result

    def state_dict(self) -> dict[str, Any]:
        """Step count, hyperparameters and copies of the state arrays."""
        with self._lock, cuda.params_stream(self._torch_device):
            out = {
                "optimizer": type(self).__name__,
                "step": self.step_count,
                "hyperparameters": self._shown(),
                "state": {n: [None if a is None else a.copy() for a in arrays]
                          for n, arrays in self._states.items()},
            }
            if self._master is not None:  # None before the first step made them
                out["master_weights"] = self._master
                out["masters"] = None if self._masters is None else [m.copy() for m in self._masters]
            return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores a state_dict() of the same optimizer class over the same param shapes.
        Everything is checked before anything is written."""
        name = type(self).__name__
        if not isinstance(state_dict, dict):
            raise TypeError(f"{name}.load_state_dict: expected a dict, got {type(state_dict).__name__}")
        if state_dict.get("optimizer") != name:
            raise ValueError(f"{name}.load_state_dict: the dict is from "
                             f"{state_dict.get('optimizer')!r}, not {name}")
        step = state_dict.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**63:
            raise ValueError(f"{name}.load_state_dict: step must be an int in [0, 2**63), "
                             f"got {step!r}")
        hyper = dict(state_dict.get("hyperparameters", {}))
        if "lr_factors" in self._hyper:
            hyper.setdefault("lr_factors", None)  # a state_dict from before lr_factors
        if set(hyper) != set(self._hyper):
            raise ValueError(f"{name}.load_state_dict: hyperparameters {sorted(hyper)} do not match "
                             f"{sorted(self._hyper)}")
        state = state_dict.get("state", {})
        if set(state) != set(self._states):
            raise ValueError(f"{name}.load_state_dict: states {sorted(state)} do not match "
                             f"{sorted(self._states)} (were the hyperparameters that add states, "
                             "like momentum or amsgrad, the same?)")
        for n, arrays in self._states.items():
            new = state[n]
            if not isinstance(new, (list, tuple)) or len(new) != len(arrays):
                raise ValueError(f"{name}.load_state_dict: state {n!r} must be a list of "
                                 f"{len(arrays)} arrays")
            for i, (own, src) in enumerate(zip(arrays, new)):
                if own is None:  # a state this param does not keep (factored rules)
                    if src is not None:
                        raise ValueError(f"{name}.load_state_dict: {n}[{i}] must be None: its "
                                         "param keeps no such state")
                    continue
                if getattr(src, "shape", None) != own.shape or getattr(src, "dtype", None) != own.dtype:
                    raise ValueError(
                        f"{name}.load_state_dict: {n}[{i}] has shape "
                        f"{getattr(src, 'shape', None)} and dtype {getattr(src, 'dtype', None)}, "
                        f"expected {own.shape} and {own.dtype}")
        masters = _loaded_masters(name, self._master, state_dict, self._views)
        # Validate the hyperparameters with the kernel's own checks before adopting them,
        # under the lock: a concurrent step must see the old or the new hyperparameters
        # with the matching states, never the new ones being tried out.
        with self._lock:
            old = self._hyper
            try:
                self._hyper = self._normalized(name, hyper)
                self._call([], [], {n: [] for n in self._states}, step=1)
                if self._schedule is not None:
                    self._load_schedule(name, step)
            except BaseException:
                self._hyper = old
                raise
            with cuda.params_stream(self._torch_device):
                for n, arrays in self._states.items():
                    for own, src in zip(arrays, state[n]):
                        if own is not None:
                            own[...] = src
                if masters is not None:
                    for own, src in zip(self._made_masters(), masters):
                        own[...] = src
                elif self._master is not None:
                    self._masters = None  # made from the params at the next step
            self._step = step

    # --- the one call -------------------------------------------------------------------
    def _call(self, params, grads, states, *, step, skip_if_nonfinite=False, **scaling):
        kwargs = dict(self._hyper)
        kwargs.update((k, v) for k, v in scaling.items() if v is not None)
        rounding = getattr(self, "_rounding", None)
        if rounding is not None and (rounding["rounding"] != "nearest"
                                     or rounding["state_rounding"] != "nearest"):
            kwargs.update(rounding)
            if not self._takes_step:  # the kernel keys its bits by the seed alone: one per step
                kwargs["seed"] = _coeffs.step_seed(rounding["seed"], step)
        factors = kwargs.pop("lr_factors", None)
        if factors is not None:
            kwargs["lr"] = _coeffs.rate_at(kwargs["lr"], factors, step)
        if skip_if_nonfinite:
            kwargs["skip_if_nonfinite"] = True
        if self._takes_step:
            kwargs["step"] = step
        return type(self)._kernel(params, grads, *self._state_args(states), backend=self._backend,
                                  **kwargs)

    def _state_args(self, states):
        return [states.get(n) for n in self._rule_spec.states]


_MASTER_ARGS = {"float32": "master_params", "remainders": "param_remainders"}  # kernel keywords


def _master_form(name: str, master_weights, capturable: bool, rounding, layout: str):
    """``master_weights=`` checked: None, "float32" or "remainders"."""
    form = _coeffs.master_weights(name, master_weights, rounding, layout)
    if form is not None and capturable:
        raise TypeError(f"{name}: master_weights does not go with capturable=True yet: a "
                        "captured step reads no masters")
    return form


def _check_master_params(name: str, form: str, prep) -> None:
    """The params' dtype, for master weights of ``form``."""
    param = _storage.dtype_name(prep.params[0].dtype)
    if form == "remainders" and param != "bfloat16":
        raise TypeError(f"{name}: master_weights='remainders' is for bfloat16 params, these are "
                        f"{param}; use master_weights='float32' for float16 params")
    if param not in ("bfloat16", "float16"):
        raise TypeError(f"{name}: master_weights is for bfloat16 and float16 params, these are "
                        f"{param}: they are their own master")


def _loaded_masters(name: str, form, state_dict: dict, like: list):
    """The masters of a state_dict to load, checked against the params ``like`` (None: none
    saved, or not made yet)."""
    saved_form = state_dict.get("master_weights")
    if saved_form != form:
        raise ValueError(f"{name}.load_state_dict: the state_dict has master_weights={saved_form!r}, "
                         f"this optimizer {form!r}")
    masters = state_dict.get("masters")
    if form is None or masters is None:
        return None
    dtype = np.dtype(np.float32 if form == "float32" else np.int16)
    if not isinstance(masters, (list, tuple)) or len(masters) != len(like):
        raise ValueError(f"{name}.load_state_dict: masters must be a list of {len(like)} arrays")
    for i, (m, p) in enumerate(zip(masters, like)):
        if getattr(m, "shape", None) != p.shape or getattr(m, "dtype", None) != dtype:
            raise ValueError(f"{name}.load_state_dict: masters[{i}] has shape {getattr(m, 'shape', None)} "
                             f"and dtype {getattr(m, 'dtype', None)}, expected {p.shape} and {dtype}")
    return masters


def _state_dtype(name: str, prep, state_dtype):
    """The states' dtype: ``state_dtype``, checked against the params' dtype as the reader
    checks a call (bindings/reader.h: storage_allows), or by default the params' dtype for
    float32 and float64 params and float32 for bfloat16 and float16 ones (a 16-bit moment
    loses most small updates: bfloat16 states are a choice to make, not a default)."""
    param = _storage.dtype_name(prep.params[0].dtype)
    if state_dtype is None:
        wanted = param if param in ("float32", "float64") else "float32"
    else:
        wanted = str(state_dtype).replace("torch.", "")
        if not isinstance(state_dtype, str):
            try:
                wanted = _storage.dtype_name(state_dtype)
            except TypeError:
                pass  # a torch dtype: its name, as str() gives it
        allowed = _native.core().storage_combinations.get(param, ((), ()))[1]
        if wanted not in allowed:
            raise TypeError(f"{name}: state_dtype {wanted} does not go with {param} params; "
                            f"with {param} params the states must be {' or '.join(allowed)}")
    if wanted == "bfloat16":
        if prep.xp is not np:
            raise TypeError(f"{name}: state_dtype bfloat16 needs host params: the states of "
                            "device params are CuPy arrays, and CuPy has no bfloat16")
        return _storage.bfloat16()
    return np.dtype(wanted)


def _carve(xp, like: list, value: float, dtype=None, shapes=None) -> list:
    """One array shaped like each of ``like`` (or of ``shapes``, where given: None there
    gives None), filled with ``value``, all cut from one block.

    An optimizer's states for a model's many small tensors then lie in one block of memory,
    not in a thousand small allocations whose 4 KiB pages lie scattered (a block of 4 MiB or
    more gets huge pages: NumPy asks for them). On the benchmark's 1,000-tensor list, every
    role carved so ran at 97-99% of one flat tensor, against 90% (SGD) and 94% (Adam) with
    every array allocated on its own; carving the states alone moved Adam by 1.5 points,
    about the noise (bench/list_layout.py). Pieces are padded to multiples of 64 bytes.
    """
    dtype = like[0].dtype if dtype is None else dtype
    shapes = [a.shape for a in like] if shapes is None else shapes
    sizes = [None if s is None else math.prod(s) for s in shapes]
    align = max(1, 64 // dtype.itemsize)
    starts, total = [], 0
    for size in sizes:
        starts.append(total)
        total += -(-(size or 0) // align) * align
    block = xp.full(total, value, dtype=dtype)
    return [None if shape is None else block[start:start + size].reshape(shape)
            for start, size, shape in zip(starts, sizes, shapes)]


class Adagrad(Optimizer):
    """torch.optim.Adagrad semantics; see :func:`fusedopt.adagrad_`."""

    _kernel_name = "adagrad_"

    def __init__(self, params, *, initial_accumulator_value: float = 0.0, **kwargs):
        self._initial_accumulator = _coeffs.number("Adagrad", "initial_accumulator_value",
                                                   initial_accumulator_value)
        super().__init__(params, **kwargs)

    def _initial_value(self, name: str) -> float:
        return self._initial_accumulator


class Adam(Optimizer):
    """torch.optim.Adam semantics; see :func:`fusedopt.adam_`.

    ``lr_factors`` (optional) is a learning-rate schedule given ahead, as torch's LambdaLR
    gives it: the rate of step t is ``lr * lr_factors[t-1]``, and ``lr * lr_factors[-1]``
    after its end. Eager and capturable steps follow it alike; for a capturable optimizer
    it is part of the table, so a graph replays a warm-up or a cosine decay with no host
    work per step (up to 1,048,576 steps with ``capturable=True``). ``lr`` is then the base
    rate. A step skipped for NaN or inf (``skip_if_nonfinite``) is not counted, so the
    schedule does not move on either.

    ``capturable=True`` (device arrays and the CUDA kernels only) makes every step one that
    a CUDA graph can capture and replay, as torch's ``capturable`` does: the step count
    lives on the device, and the coefficients of every step (bias corrections and step
    sizes) are computed on the host once, into a table on the device that stops where
    ``beta^t`` underflows and they stop changing (41,570 rows of 80 bytes for the default
    betas; beta2 up to about 0.99996). Before each update a one-thread kernel advances the
    count and picks the row. So a replayed step has the bits of the same step taken
    eagerly; nothing is computed on the device that the host computes otherwise.

    Setting ``lr`` rewrites the table in place (2.4 ms on the host for the default betas:
    the powers of the betas are kept), so graphs captured earlier replay at the new rate;
    do it outside a capture. ``load_state_dict`` takes hyperparameters that keep the
    kernel and the table's length, and refuses others (they need a new optimizer and a new
    capture). With ``skip_if_nonfinite`` the NaN and inf count stays on the device too: a
    step with any writes nothing and is not counted, and ``step()`` returns None.
    """

    _kernel_name = "adam_"
    _extra_defaults = dict(lr_factors=None)
    _capturable_rule = "adam"

    def _table(self, hyper):
        return rules.adam.adam_table(type(self).__name__, **self._kernel_spec.fixed, **hyper)


class AdamW(Adam):
    """torch.optim.AdamW semantics; see :func:`fusedopt.adamw_`. ``lr_factors`` and
    ``capturable`` as in :class:`Adam`."""

    _kernel_name = "adamw_"


class SGD(Optimizer):
    """torch.optim.SGD semantics (``convention="keras"`` for the Keras form); see
    :func:`fusedopt.sgd_`."""

    _kernel_name = "sgd_"


class AdaptiveSGD(SGD):
    """SGD at ``lr_t = lr / (1 + ||g||^2)`` (global gradient norm); ``step`` returns the
    :class:`fusedopt.AdaptiveRate` used. See :func:`fusedopt.adaptive_sgd_`."""

    _kernel_name = "adaptive_sgd_"


def _simple_class(rule: rules.Rule, kernel: rules.Kernel) -> type:
    """The optimizer of a kernel that needs nothing beyond its description."""
    summary = kernel.doc.strip().split("\n\n")[0].strip()
    doc = (f"Steps :func:`fusedopt.{kernel.name}` on the arrays it holds, with states of its "
           f"own; see there.\n\n    {summary}")
    return type(kernel.optimizer, (Optimizer,),
                {"_kernel_name": kernel.name, "__doc__": doc, "__module__": __name__,
                 "__qualname__": kernel.optimizer})


# Every other rule's optimizer: SGD, AdaptiveSGD, RMSprop, Lion, ...
for _rule, _kernel in rules.KERNELS.values():
    if _kernel.optimizer and _kernel.optimizer not in globals():
        globals()[_kernel.optimizer] = _simple_class(_rule, _kernel)
del _rule, _kernel

__all__ = ["Optimizer", *(k.optimizer for _, k in rules.KERNELS.values() if k.optimizer)]

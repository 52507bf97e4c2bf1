"""``torch.optim.Optimizer`` subclasses whose step is fusedopt's fused kernels.

    import fusedopt.torch
    opt = fusedopt.torch.AdamW(model.parameters(), lr=1e-3)   # was torch.optim.AdamW

:class:`SGD`, :class:`Adagrad`, :class:`RMSprop`, :class:`Adam`, :class:`AdamW`,
:class:`Adamax`, :class:`NAdam`, :class:`RAdam`, :class:`Adadelta` and :class:`Adafactor`
take the arguments, defaults and checks of the ``torch.optim`` class of the same name (torch
2.13; the last five are made from their rules' descriptions and torch's own constructors),
keep their state under torch's keys (``step`` as a 0-d float32 tensor, ``exp_avg``,
``exp_avg_sq``, ``momentum_buffer``, ...) and write and read torch's ``state_dict`` format:
a checkpoint of one loads into the other and training goes on as if it had never left.
:class:`AdaptiveSGD` (SGD at ``lr / (1 + ||g||^2)``), :class:`Lion` and :class:`LAMB` have no
torch counterpart. Everything the base class provides keeps working: ``zero_grad``, step and
state_dict hooks, ``add_param_group``, ``torch.optim.lr_scheduler``, ``torch.amp.GradScaler``.

A step runs under ``torch.no_grad()``, reads ``p.grad``, skips params whose grad is None
(making no state for them), and makes one fused call per set of params that share their
hyperparameters, step count, device and dtype: param groups whose hyperparameters are equal
share one call. ``foreach`` and ``fused`` are accepted and change nothing (every step is
fused); ``differentiable=True`` and ``capturable=True`` are refused. Keyword-only
``state_dtype=`` (keyword only) keeps the states of float32, bfloat16 and float16 params in
float32 or bfloat16 (by default the param's dtype, as torch, and float32 for float16 params,
which torch would keep in float16; float64 params keep float64 states); a state_dict loaded
is converted to it. ``skip_if_nonfinite=True`` makes a step whose gradients hold NaN or inf write nothing and
leave the step counts as they were (``last_step_skipped`` then says so). Keyword-only
``max_grad_norm=`` clips as ``torch.nn.utils.clip_grad_norm_`` does, by the L2 norm of all
the step's gradients, inside the update (the gradients are not written; ``last_grad_norm``
holds the norm before clipping). ``rounding="stochastic"`` and ``state_rounding="stochastic"``
(with ``seed=``) round bfloat16 and float16 params and states stochastically, reproducibly
(see the functional kernels). ``torch.amp.GradScaler`` hands its scale and inf flag to
the step (``_step_supports_amp_scaling``): the kernels unscale the gradients as they read
them, with no pass of their own, and an overflow step writes nothing and is not counted. Params are float32
or float64 tensors of any dense layout (channels_last included); states take the param's.

What a step keeps between steps: the lists of params, state tensors and step counts of each
call, made again when the set of params with gradients changes, after ``add_param_group`` and
``load_state_dict``, and when a change of hyperparameters changes which states exist
(``amsgrad``, ``centered``, momentum to or from zero). Replacing state tensors by hand between
steps is not seen; load a state_dict instead.

Importing this module imports torch (``import fusedopt`` alone does not).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from itertools import chain
from operator import attrgetter
from typing import Any

import torch
import torch.optim.optimizer as _torch_optimizer

import fusedopt

__all__ = ["SGD", "AdaptiveSGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Lion", "LAMB"]

_grad_of = attrgetter("grad")
# torch's registries of the step hooks of every optimizer (register_optimizer_step_*_hook);
# None where a torch release moves them, and then every step takes torch's own wrapper.
_GLOBAL_STEP_HOOKS = (getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None),
                      getattr(_torch_optimizer, "_global_optimizer_post_hooks", None))
_profiler_enabled = torch._C._autograd._profiler_enabled
_NONE = type(None)
_PLAIN = torch.Tensor


def _scalar_dtype():
    # The dtype torch's non-fused optimizers give their `step` tensors.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _value(x) -> float:
    """A hyperparameter as a Python float (a 1-element tensor included)."""
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def _local(t):
    """The tensor whose memory a step writes: a DTensor's local shard, else the tensor."""
    return t if type(t) is _PLAIN else getattr(t, "_local_tensor", t)


def _dense(t) -> bool:
    """Whether ``t``'s elements fill its memory span exactly once (contiguous in some
    dimension order: C order, channels_last, a transpose)."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted((d for d in zip(t.shape, t.stride()) if d[0] != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def _flat(t):
    """A dense tensor as the 1-D view of its memory that the kernels walk (itself when it is
    C-contiguous); params, grads and states of one param share their strides, so their
    elements pair up in memory order."""
    return t if t.is_contiguous() else t.as_strided((t.numel(),), (1,), t.storage_offset())


def _laid_out_like(g, like):
    return g if g.stride() == like.stride() else torch.empty_like(like).copy_(g)


def _like(p, value: float, dtype=None):
    """A state for ``p`` filled with ``value``, laid out as ``p`` (a DTensor for a DTensor)."""
    return torch.full_like(p.detach(), value, dtype=dtype, memory_format=torch.preserve_format)


# The state keys of master weights, with their dtypes, and what master_weights= names.
_MASTER_KEYS = {"master_param": torch.float32, "param_remainder": torch.int16}
_MASTERS = {"float32": ("master_param", "master_params"),
            "remainders": ("param_remainder", "param_remainders")}


def _master_of(name: str, master_weights, rounding: str, layout: str):
    """``master_weights=`` checked: None, or (state key, kernel argument)."""
    form = fusedopt._coeffs.master_weights(name, master_weights, rounding, layout)
    return None if form is None else _MASTERS[form]


def _state_dtype(name: str, state_dtype):
    """``state_dtype=`` checked: None, or float32 or bfloat16 (a torch dtype or its name)."""
    if state_dtype is None:
        return None
    wanted = {"float32": torch.float32, "bfloat16": torch.bfloat16, torch.float32: torch.float32,
              torch.bfloat16: torch.bfloat16, torch.float64: torch.float64, "float64": torch.float64}
    try:
        return wanted[state_dtype]
    except (KeyError, TypeError):
        raise TypeError(f"{name}: state_dtype must be None, torch.float32 or torch.bfloat16, got "
                        f"{state_dtype!r}") from None


def _check_lr(name: str, lr) -> None:
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError(f"{name}: a tensor lr must have exactly 1 element, got {lr.numel()}")
    if not 0.0 <= lr:
        raise ValueError(f"{name}: invalid learning rate {lr} (must be >= 0)")


def _check_at_least(name: str, what: str, value, low: float = 0.0) -> None:
    if not low <= value:
        raise ValueError(f"{name}: invalid {what} {value} (must be >= {low})")


def _check_adam_like(name: str, lr, betas, eps, weight_decay) -> tuple:
    """torch.optim.Adam's checks of lr, betas, eps and weight_decay; returns the betas."""
    _check_lr(name, lr)
    _check_at_least(name, "epsilon value", eps)
    betas = _check_betas(name, betas)
    _check_at_least(name, "weight_decay value", weight_decay)
    return betas


def _check_betas(name: str, betas) -> tuple:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        if isinstance(b, torch.Tensor) and b.numel() != 1:
            raise ValueError(f"{name}: a tensor betas[{i}] must have exactly 1 element")
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{name}: invalid beta parameter at index {i}: {b} (must be in [0, 1))")
    if isinstance(betas[0], torch.Tensor) != isinstance(betas[1], torch.Tensor):
        raise ValueError(f"{name}: betas must be both floats or both tensors")
    return tuple(b.reshape(()) if isinstance(b, torch.Tensor) else b for b in betas)


class _Unit:
    """The params of one param group that have gradients and share a step count, with
    their state tensors as the kernel takes them."""

    __slots__ = ("group", "params", "tensors", "state_args", "count", "steps", "dtensor", "key",
                 "strided", "locals", "scalars")

    def __init__(self, group, params, tensors, state_args, count, steps, dtensor, key, strided,
                 locals_):
        self.group = group  # the param group (its index in param_groups)
        self.params = params  # the params as the group holds them (p.grad is read off these)
        self.tensors = tensors  # what the kernel writes: the params, or their local shards
        self.state_args = state_args  # the kernel's state arguments: name -> list of tensors
        self.count = count  # the steps taken so far (all params of the unit alike)
        self.steps = steps  # the 1-D tensor whose elements are state[p]["step"], or None
        self.dtensor = dtensor  # whether grads are DTensors (read their local shard)
        self.key = key  # (device, dtype): what a call must share beside hyperparameters
        self.strided = strided  # indices of params that are not C-contiguous (channels_last...)
        self.locals = locals_  # the params' tensors as laid out (the shards of DTensors)
        self.scalars: dict = {}  # key -> the 1-D tensor whose elements are state[p][key]


class _Plan:
    """What a step reuses: the units, and what they were built for."""

    __slots__ = ("units", "idle", "lengths", "layouts", "state", "n_state")

    def __init__(self, units, idle, lengths, layouts, state):
        self.units = units
        self.idle = idle  # per group: the params that had no grad when this plan was made
        self.lengths = lengths  # per group: len(group["params"])
        self.layouts = layouts  # per group: which states exist (_layout)
        self.state = state  # the optimizer's state dict object it was made with
        self.n_state = len(state)  # ... and how many params it held state for


class _FusedOptimizer(torch.optim.Optimizer):
    """The part every optimizer here shares: construction checks, the step, state_dict."""

    _has_step = True  # whether torch keeps a `step` tensor in each param's state
    _scalar_states: dict = {}  # per-param 0-d states besides step (NAdam's mu_product): initial
    _eager_state = False  # Adagrad makes every param's state in its constructor

    # torch.amp.GradScaler sets `grad_scale` and `found_inf` on the optimizer for the step
    # and does not unscale the gradients itself: the kernels do, as they read them.
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict, skip_if_nonfinite: bool, max_grad_norm=None,
                 rounding=("nearest", "nearest", 0), state_dtype=None, master_weights=None):
        name = type(self).__name__
        if skip_if_nonfinite is not True and skip_if_nonfinite is not False:
            raise TypeError(f"{name}: skip_if_nonfinite must be a bool, got "
                            f"{type(skip_if_nonfinite).__name__}")
        if max_grad_norm is not None:
            max_grad_norm = fusedopt._coeffs.grad_scaling(name, None, None, max_grad_norm,
                                                          None).max_grad_norm
        self.max_grad_norm = max_grad_norm
        self.last_grad_norm = None
        # Stochastic rounding of bfloat16/float16 params and states: (rounding,
        # state_rounding, seed), checked here; each call's key takes its step count.
        fusedopt._coeffs.rounding(name, rounding[0], rounding[1], rounding[2], 1)
        self._rounding = dict(rounding=rounding[0], state_rounding=rounding[1],
                              seed=fusedopt._coeffs.seed_value(name, rounding[2]))
        self._state_dtype = _state_dtype(name, state_dtype)
        # Master weights of the bfloat16 and float16 params: (state key, kernel argument),
        # or None (fusedopt.optim's master_weights=).
        self._master = _master_of(name, master_weights, rounding[0], self._kernel_layout())
        self._scaling: dict = {}
        if defaults.get("differentiable"):
            raise ValueError(
                f"{name}: differentiable=True is not supported: the fused kernels write the params "
                "in place outside autograd, so no graph runs through the step. Where the step "
                "itself must be differentiated, use "
                + (f"torch.optim.{name}(differentiable=True)" if hasattr(torch.optim, name)
                   else "a torch.optim optimizer with differentiable=True"))
        if defaults.get("capturable"):
            raise ValueError(
                f"{name}: capturable=True is not supported by fusedopt.torch yet: its steps keep the "
                "step count on the host. Use capturable=False (the default); for steps captured in "
                "a CUDA graph, fusedopt.optim.Adam(capturable=True) keeps the count on the device")
        if defaults.get("fused") and defaults.get("foreach"):
            raise RuntimeError(f"{name}: fused=True and foreach=True cannot be set together")
        self._skip = skip_if_nonfinite
        self._plan: _Plan | None = None
        self.last_step_skipped = False
        self._last_result = None
        super().__init__(params, defaults)  # Adagrad's states: made in add_param_group

    @staticmethod
    def profile_hook_step(func):
        """The wrapper torch's constructor puts around ``step`` (``_patch_step_function``).

        torch's runs the step hooks and labels the step for the profiler with a
        ``record_function``, which costs about 5 µs a step whether a profiler runs or not:
        as much as the whole update of a small model. This one takes torch's wrapper, hooks
        and label alike, when a step hook is registered (here or globally) or a profiler
        runs on this thread, and otherwise calls the step directly."""
        full = torch.optim.Optimizer.profile_hook_step(func)
        pre, post = _GLOBAL_STEP_HOOKS

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            self = args[0]
            if (pre is None or post is None or pre or post or self._optimizer_step_pre_hooks
                    or self._optimizer_step_post_hooks or _profiler_enabled()):
                return full(*args, **kwargs)
            out = func(*args, **kwargs)
            self._optimizer_step_code()  # what torch's profiler hooks to see a step
            return out

        return wrapper

    # --- what each optimizer says ------------------------------------------------------
    def _layout(self, group) -> tuple:
        """The state keys a group's params hold, in the order the kernel takes them."""
        raise NotImplementedError

    def _initial(self, group, key: str) -> float:
        return 0.0

    def _state_shape(self, p, key: str):
        """The shape of ``p``'s state ``key``, or None where ``p`` keeps no such state (a
        factored rule's: Adafactor's row and column factors)."""
        return tuple(p.shape)

    # torch's state key -> the kernel's state argument
    _state_args = {"momentum_buffer": "momentum_buffers", "sum": "state_sums",
                   "square_avg": "square_avgs", "grad_avg": "grad_avgs", "exp_avg": "exp_avgs",
                   "exp_avg_sq": "exp_avg_sqs", "max_exp_avg_sq": "max_exp_avg_sqs"}

    def _call(self, group, count: int):
        """(kernel, its keyword arguments for this group at step count ``count``)."""
        raise NotImplementedError

    def _unit_call(self, unit):
        """(kernel, keyword arguments) of a unit: its group's, at its step count."""
        return self._call(self.param_groups[unit.group], unit.count)

    def _advance_scalars(self, unit) -> None:
        """After a step of ``unit`` (its count already advanced): its scalar states."""

    # --- param groups ------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._plan = None
        if self._eager_state:
            group = self.param_groups[-1]
            self._new_state(group, [p for p in group["params"] if not self.state.get(p)])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_skip", False)
        self.__dict__.setdefault("last_step_skipped", False)
        self.__dict__.setdefault("_last_result", None)
        self.__dict__.setdefault("max_grad_norm", None)
        self.__dict__.setdefault("last_grad_norm", None)
        self.__dict__.setdefault("_rounding", dict(rounding="nearest", state_rounding="nearest", seed=0))
        self.__dict__.setdefault("_state_dtype", None)
        self.__dict__.setdefault("_master", None)
        self._scaling = {}
        self._plan = None

    def __getstate__(self) -> dict[str, Any]:
        out = super().__getstate__()
        out["_skip"] = self._skip
        out.pop("_scaling", None)
        return out

    # --- state -------------------------------------------------------------------------
    def _new_state(self, group, params, count: int = 0) -> None:
        """Empty states for ``params`` (all of one group, device and dtype), each role cut
        from one block of memory, as torch would make them (zeros, or Adagrad's initial
        value); a DTensor param gets DTensor states, each its own."""
        if not params:
            return
        parts: dict = {}
        for p in params:
            parts.setdefault((p.device, p.dtype), []).append(p)
        if len(parts) > 1:
            for part in parts.values():
                self._new_state(group, part, count)
            return
        keys = self._layout(group)
        plain = all((type(p) is _PLAIN or type(p) is torch.nn.Parameter) and p.is_contiguous()
                    for p in params)
        states = [self.state[p] for p in params]
        dtype = self._states_dtype_of(params[0].dtype)
        for key in keys:
            init = self._initial(group, key)
            shapes = [self._state_shape(p, key) for p in params]
            if plain or any(s != tuple(p.shape) for p, s in zip(params, shapes)):
                pieces = _carve(params, init, dtype, shapes)
            else:
                pieces = [_like(p, init, dtype) for p in params]
            for st, t in zip(states, pieces):
                if t is not None:
                    st.setdefault(key, t)
        if self._has_step:
            block = torch.full((len(params),), float(count), dtype=_scalar_dtype())
            for st, t in zip(states, block.unbind(0)):
                st.setdefault("step", t)

    def _states_dtype_of(self, param_dtype):
        """The dtype of the states of params of ``param_dtype``: ``state_dtype`` where given
        (float64 params keep float64 states), else the param's, and float32 for float16
        params (the kernels keep no float16 states) and for the 16-bit params of
        ``master_weights`` (whose step is their float32 master's)."""
        if param_dtype == torch.float64:
            if self._state_dtype not in (None, torch.float64):
                raise TypeError(f"{type(self).__name__}: state_dtype {self._state_dtype} does not go with "
                                "float64 params, whose states are float64")
            return torch.float64
        if self._state_dtype is not None:
            return self._state_dtype
        if self._master is not None and param_dtype in (torch.bfloat16, torch.float16):
            return torch.float32  # the step is a float32 one: its master's
        return torch.float32 if param_dtype == torch.float16 else param_dtype

    def _build(self) -> _Plan:
        """The units of the current param groups: params with grads, grouped by step count,
        device and dtype, with any missing state made and the step tensors of each unit
        moved into one block (so that one add_ counts a step)."""
        units, idle, lengths, layouts = [], [], [], []
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            lengths.append(len(params))
            layout = self._layout(group)
            layouts.append(layout)
            with_grad = [p for p in params if p.grad is not None]
            idle.append([p for p in params if p.grad is None])
            for p in with_grad:
                if p.grad.is_sparse or p.grad.layout != torch.strided:
                    raise RuntimeError(self._sparse_message())
            if len({id(p) for p in with_grad}) != len(with_grad):
                raise ValueError(f"{type(self).__name__}: a param appears more than once in param "
                                 f"group {gi}; list each param once")
            by_key: dict = {}
            for p in with_grad:
                loc = _local(p)
                if not _dense(loc):
                    raise ValueError(f"{type(self).__name__}: a param of shape {tuple(loc.shape)} and "
                                     f"strides {loc.stride()} has gaps or overlaps in its memory; the "
                                     "kernels update dense tensors in place (any dimension order)")
                st = self.state.get(p)
                count = self._count_of(st) if st else 0
                by_key.setdefault((count, loc.device, loc.dtype), []).append(p)
            for (count, device, dtype), ps in by_key.items():
                self._new_state(group, [p for p in ps if not self.state.get(p)], count)
                locs = [_local(p) for p in ps]
                for p, loc in zip(ps, locs):
                    st = self.state[p]
                    for key in layout:
                        value = st.get(key)
                        if self._state_shape(p, key) is None:
                            continue
                        if value is None:  # a state loaded without a key this layout now needs
                            st[key] = _carve([p], self._initial(group, key), self._states_dtype_of(dtype),
                                             [self._state_shape(p, key)])[0]
                        elif (_local(value).stride() != loc.stride() and type(value) is _PLAIN
                              and value.shape == loc.shape):
                            # A state laid out unlike its param (loaded from elsewhere): the
                            # kernel walks all of them in one order, so copy it into the param's.
                            st[key] = _like(p, 0.0, value.dtype).copy_(value)
                strided = [i for i, loc in enumerate(locs) if not loc.is_contiguous()]
                states = {self._state_args[key]: [_flat(_local(self.state[p][key]))
                                                  if key in self.state[p] else None for p in ps]
                          for key in layout}
                master = self._masters_for(ps, dtype)
                if master is not None:  # a kernel argument like the states'
                    states[master[0]] = master[1]
                steps = None
                if self._has_step:
                    steps = torch.full((len(ps),), float(count), dtype=_scalar_dtype())
                    for p, t in zip(ps, steps.unbind(0)):
                        self.state[p]["step"] = t
                dtensor = any(type(p.grad) is not _PLAIN for p in ps)
                unit = _Unit(gi, ps, [_flat(loc) for loc in locs], states, count, steps,
                             dtensor, (device, dtype), strided, locs)
                for key, initial in self._scalar_states.items():
                    # Like the step counts: one block, each param's state a view of it.
                    block = torch.tensor([initial if self.state[p].get(key) is None
                                          else _value(self.state[p][key]) for p in ps],
                                         dtype=_scalar_dtype())
                    for p, t in zip(ps, block.unbind(0)):
                        self.state[p][key] = t
                    unit.scalars[key] = block
                units.append(unit)
        return _Plan(units, idle, lengths, layouts, self.state)

    def _masters_for(self, ps, dtype):
        """(kernel argument, flat tensors) of the masters of params ``ps`` of ``dtype``,
        made from the params where a state has none (a first step, or a state loaded from
        torch's optimizer); None where the params keep none (no master_weights, or float32
        and float64 params, their own masters)."""
        if self._master is None or dtype not in (torch.bfloat16, torch.float16):
            return None
        key, arg = self._master
        if key == "param_remainder" and dtype != torch.bfloat16:
            raise TypeError(f"{type(self).__name__}: master_weights='remainders' is for bfloat16 "
                            "params, and a param is float16; use master_weights='float32'")
        out = []
        for p in ps:
            st = self.state[p]
            if st.get(key) is None:
                if key == "master_param":
                    st[key] = _like(p, 0.0, torch.float32).copy_(p)
                else:  # a zero remainder: the param's value is the master
                    st[key] = _like(p, 0, torch.int16)
            out.append(_flat(_local(st[key])))
        return arg, out

    def _kernel_layout(self) -> str:
        rule = getattr(self, "_rule", None)
        return "same" if rule is None else rule.state_layout

    def _count_of(self, st: dict) -> int:
        if self._has_step:
            step = st.get("step")
            return 0 if step is None else int(_value(step))
        # SGD: no step in torch's state; only "has a momentum buffer yet" matters.
        return 1 if st.get("momentum_buffer") is not None else 0

    def _plan_for_step(self) -> _Plan:
        plan = self._plan
        groups = self.param_groups
        if plan is not None and plan.state is self.state and len(plan.lengths) == len(groups) \
                and plan.n_state == len(self.state):
            for gi, group in enumerate(groups):
                if (len(group["params"]) != plan.lengths[gi] or self._layout(group) != plan.layouts[gi]
                        or any(p.grad is not None for p in plan.idle[gi])):
                    break
            else:
                return plan
        plan = self._plan = self._build()
        return plan

    # --- the step ----------------------------------------------------------------------
    def step(self, closure=None):
        """One update of every param with a gradient; returns the closure's loss (the
        closure runs first, with gradients enabled), or None."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # torch.no_grad() without its context-manager object: a few µs a step on small models.
        was = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            self._fused_step()
        finally:
            torch._C._set_grad_enabled(was)
        return loss

    def _grads(self, unit):
        """The unit's grads as the kernel takes them, or None if one went away."""
        grads = list(map(_grad_of, unit.params))
        if _NONE in set(map(type, grads)):
            return None
        if unit.dtensor:
            grads = [_local(g) for g in grads]
        for i in unit.strided:  # every array of such a param is walked in memory order
            grads[i] = _flat(_laid_out_like(grads[i], unit.locals[i]))
        return grads

    def _step_scaling(self) -> dict:
        """The kernels' loss-scaling and clipping arguments of this step: GradScaler's scale
        and inf flag (set on the optimizer for the step), and max_grad_norm."""
        out = {}
        for key in ("grad_scale", "found_inf"):
            value = self.__dict__.get(key)
            if value is not None:
                out[key] = value
        if self.max_grad_norm is not None:
            out["max_grad_norm"] = self.max_grad_norm
        return out

    def _rounding_of(self, kwargs: dict, units) -> dict:
        """A call's rounding arguments: none for nearest rounding; else the optimizer's,
        with a seed per step for the kernels that take no step count."""
        r = self._rounding
        if r["rounding"] == "nearest" and r["state_rounding"] == "nearest":
            return {}
        if "step" in kwargs:
            return r
        return dict(r, seed=fusedopt._coeffs.step_seed(r["seed"], units[0].count + 1))

    def _global_norm(self, calls, scaling: dict) -> float:
        """The norm to clip a step of several calls by: of all their unscaled gradients
        together, in the kernels' fixed blocking (the same bits at any thread count)."""
        grads = [g for entry in calls.values() for g in entry[3]]
        sum_sq = fusedopt._dispatch.grad_sum_of_squares(grads)
        checked = fusedopt._coeffs.grad_scaling(type(self).__name__, scaling.get("grad_scale"),
                                                None, self.max_grad_norm, None)
        return checked.unscaled_norm(sum_sq)

    def _fused_step(self) -> None:
        self._scaling = self._step_scaling()
        self.last_grad_norm = None
        plan = self._plan_for_step()
        units = plan.units
        if len(units) == 1:  # one group, or groups of one call: no merging
            unit = units[0]
            grads = self._grads(unit)
            if grads is None:
                self._plan = None
                return self._fused_step()
            kernel, kwargs = self._unit_call(unit)
            self._run(kernel, kwargs, unit.tensors, grads, unit.state_args, units)
            return
        calls: dict = {}
        for unit in units:
            grads = self._grads(unit)
            if grads is None:
                # A grad went away since the plan was made (set to None by hand): make it again.
                self._plan = None
                return self._fused_step()
            kernel, kwargs = self._unit_call(unit)
            key = (kernel, tuple(kwargs.items()), unit.key)
            entry = calls.get(key)
            if entry is None:
                calls[key] = entry = (kernel, kwargs, [], [], {k: [] for k in unit.state_args}, [])
            entry[2].extend(unit.tensors)
            entry[3].extend(grads)
            for name, lst in entry[4].items():
                lst.extend(unit.state_args[name])
            entry[5].append(unit)
        if len(calls) > 1:
            # Each call checks its own arrays before it writes; a step of several calls is
            # checked whole first, so that a refusal of the last leaves the first unwritten.
            self._precheck(calls)
            if self._skip and not self._all_finite(calls):
                self.last_step_skipped = True
                return
            if self.max_grad_norm is not None:
                self._scaling["grad_norm"] = self._global_norm(calls, self._scaling)
        skipped = False
        results = [self._run(*entry) for entry in calls.values()]
        for result in results:
            skipped = skipped or (result is not None and result.skipped)
        self._last_result = results[0] if results else None
        self.last_step_skipped = skipped

    def _run(self, kernel, kwargs, params, grads, state_args, units):
        """One kernel call; the step counts of its units advance unless it was skipped."""
        try:
            result = kernel(params, grads, **state_args, **kwargs, skip_if_nonfinite=self._skip,
                            **self._scaling, **self._rounding_of(kwargs, units))
        except (TypeError, ValueError):
            if any(g.layout != torch.strided for g in grads):
                raise RuntimeError(self._sparse_message()) from None
            raise
        self._last_result = result
        norm = getattr(result, "grad_norm", None)
        if norm is not None:
            self.last_grad_norm = norm
        if result is not None and result.skipped:
            self.last_step_skipped = True
            return result
        self.last_step_skipped = False
        for unit in units:
            unit.count += 1
            if unit.steps is not None:
                unit.steps.add_(1.0)
            if unit.scalars:
                self._advance_scalars(unit)
        return result

    def _precheck(self, calls) -> None:
        name = type(self).__name__
        for kernel, kwargs, params, grads, state_args, _ in calls.values():
            kernel([], [], **{k: [] for k in state_args}, **kwargs)
            for p, g in zip(params, grads):
                if g.layout != torch.strided:
                    raise RuntimeError(self._sparse_message())
                if g.dtype != p.dtype or g.shape != p.shape or g.device != p.device \
                        or not g.is_contiguous():
                    raise ValueError(
                        f"{name}: a gradient of dtype {g.dtype}, shape {tuple(g.shape)} on {g.device} "
                        f"for a param of dtype {p.dtype}, shape {tuple(p.shape)} on {p.device}; "
                        "nothing was written")

    def _all_finite(self, calls) -> bool:
        grads = [g for entry in calls.values() for g in entry[3]]
        norms = torch._foreach_norm(grads, float("inf"))
        return bool(torch.stack([n.to(torch.float64) for n in norms]).isfinite().all())

    def _sparse_message(self) -> str:
        name = type(self).__name__
        return (f"{name}: sparse gradients are not supported; the fused kernels read dense "
                "tensors. Use torch.optim.SparseAdam for sparse embeddings (in a second optimizer "
                "over those params), or make the gradients dense (nn.Embedding(sparse=False))")

    # --- state_dict --------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads torch's state_dict format (from this class or the torch class of the same
        name). Everything is checked before anything is written: the number of groups and
        of params in each, the state keys each param needs, and each state tensor's shape
        and dtype (floating point, cast to the param's dtype as torch casts it)."""
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or \
                "param_groups" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and "
                             "'param_groups' (what state_dict() returns)")
        import copy

        saved_groups = copy.deepcopy(state_dict["param_groups"])
        groups = self.param_groups
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(groups):
            n = len(saved_groups) if isinstance(saved_groups, (list, tuple)) else "no list of"
            raise ValueError(f"{name}.load_state_dict: the state_dict has {n} param groups, this "
                             f"optimizer {len(groups)}")
        for i, (g, sg) in enumerate(zip(groups, saved_groups)):
            if not isinstance(sg, dict) or not isinstance(sg.get("params"), (list, tuple)):
                raise ValueError(f"{name}.load_state_dict: param_groups[{i}] has no list 'params'")
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(f"{name}.load_state_dict: param group {i} has {len(sg['params'])} "
                                 f"params in the state_dict and {len(g['params'])} here")
        id_map = dict(zip(chain.from_iterable(sg["params"] for sg in saved_groups),
                          chain.from_iterable(g["params"] for g in groups)))
        group_of = {}
        for sg, g in zip(saved_groups, groups):
            merged = {**self.defaults, **{k: v for k, v in sg.items() if k != "params"}}
            for p in g["params"]:
                group_of[p] = merged
        new_state: defaultdict = defaultdict(dict)
        saved_state = state_dict["state"]
        if not isinstance(saved_state, dict):
            raise ValueError(f"{name}.load_state_dict: 'state' must be a dict")
        for k, v in saved_state.items():
            if k not in id_map:
                raise ValueError(f"{name}.load_state_dict: state for param {k!r}, which no param "
                                 "group of the state_dict lists")
            p = id_map[k]
            if not isinstance(v, dict):
                raise ValueError(f"{name}.load_state_dict: state[{k!r}] must be a dict")
            new_state[p] = self._checked_state(name, k, p, v, group_of[p])
        if self._eager_state:
            missing = [k for k, p in id_map.items() if k not in saved_state]
            if missing:
                raise ValueError(f"{name}.load_state_dict: no state for params {missing[:5]}; "
                                 f"torch.optim.{name} keeps a state for every param")
        # Nothing was refused: write.
        param_groups = []
        for g, sg in zip(groups, saved_groups):
            sg["params"] = g["params"]
            if "param_names" in g and "param_names" not in sg:
                sg["param_names"] = g["param_names"]
            for key, default in self.defaults.items():
                sg.setdefault(key, default)
            param_groups.append(sg)
        self.__setstate__({"state": new_state, "param_groups": param_groups})
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _checked_state(self, name, k, p, v, group) -> dict:
        where = f"{name}.load_state_dict: state[{k!r}]"
        out = {}
        needed = ([key for key in self._layout(group) if self._state_shape(p, key) is not None]
                  + (["step"] if self._has_step else []) + list(self._scalar_states))
        missing = [key for key in needed if key not in v]
        if missing:
            raise ValueError(f"{where} lacks {missing} (has {sorted(map(str, v))}); is the "
                             f"state_dict from another optimizer than {name}?")
        for key, value in v.items():
            if key == "step":
                step = _value(value) if isinstance(value, (int, float, torch.Tensor)) else None
                if isinstance(value, torch.Tensor) and value.numel() != 1:
                    step = None
                if step is None or not math.isfinite(step) or step < 0 or step != int(step):
                    raise ValueError(f"{where}['step'] must be a whole number >= 0, got {value!r}")
                out[key] = torch.tensor(step, dtype=_scalar_dtype())
            elif key in self._scalar_states:
                number = value if isinstance(value, (int, float)) else None
                if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
                    number = _value(value)
                if number is None or not math.isfinite(number):
                    raise ValueError(f"{where}[{key!r}] must be a finite number, got {value!r}")
                out[key] = torch.tensor(float(number), dtype=_scalar_dtype())
            elif key in _MASTER_KEYS and isinstance(value, torch.Tensor):
                if tuple(value.shape) != tuple(p.shape) or value.dtype != _MASTER_KEYS[key]:
                    raise ValueError(f"{where}[{key!r}] has shape {tuple(value.shape)} and dtype "
                                     f"{value.dtype}, its param needs {tuple(p.shape)} and "
                                     f"{_MASTER_KEYS[key]}")
                out[key] = value.to(device=_local(p).device if type(value) is _PLAIN else p.device,
                                    copy=True)
            elif isinstance(value, torch.Tensor):
                want = self._state_shape(p, key) if key in self._layout(group) else tuple(p.shape)
                if tuple(value.shape) != want:
                    raise ValueError(f"{where}[{key!r}] has shape {tuple(value.shape)}, its param "
                                     f"{tuple(p.shape)} needs {want}")
                if not value.is_floating_point():
                    raise ValueError(f"{where}[{key!r}] has dtype {value.dtype}; optimizer states "
                                     "are floating point")
                out[key] = value.to(dtype=self._states_dtype_of(p.dtype), device=_local(p).device
                                    if type(value) is _PLAIN else p.device, copy=True)
            else:
                if key in needed and value is not None:
                    raise ValueError(f"{where}[{key!r}] must be a tensor, got {type(value).__name__}")
                out[key] = value
        return out


def _carve(like: list, value: float, dtype=None, shapes=None) -> list:
    """A tensor of ``dtype`` (default: the first's) shaped like each of ``like`` (or of
    ``shapes``, where given: None there gives None), filled with ``value``, all cut from one
    block (padded to 64 bytes), as fusedopt.optim lays out its states."""
    device = like[0].device
    dtype = like[0].dtype if dtype is None else dtype
    shapes = [tuple(t.shape) for t in like] if shapes is None else shapes
    sizes = [None if s is None else math.prod(s) for s in shapes]
    align = max(1, 64 // torch.empty((), dtype=dtype).element_size())
    starts, total = [], 0
    for size in sizes:
        starts.append(total)
        total += -(-(size or 0) // align) * align
    block = torch.full((total,), value, dtype=dtype, device=device)
    return [None if shape is None else block[start:start + size].view(shape)
            for start, size, shape in zip(starts, sizes, shapes)]


# ---------------------------------------------------------------------------------------
class SGD(_FusedOptimizer):
    """``torch.optim.SGD`` through :func:`fusedopt.sgd_`: the same arguments and state
    (``momentum_buffer`` where momentum is not 0)."""

    _has_step = False
    _kernel = staticmethod(fusedopt.sgd_)

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None,
                 skip_if_nonfinite=False, max_grad_norm=None,
                 rounding="nearest", state_rounding="nearest", seed=0, state_dtype=None, master_weights=None):
        name = type(self).__name__
        _check_lr(name, lr)
        _check_at_least(name, "momentum value", momentum)
        _check_at_least(name, "weight_decay value", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"{name}: Nesterov momentum needs a momentum > 0 and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, skip_if_nonfinite, max_grad_norm,
                         (rounding, state_rounding, seed), state_dtype, master_weights)

    def _layout(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _call(self, group, count):
        kwargs = dict(lr=_value(group["lr"]), momentum=float(group["momentum"]),
                      dampening=float(group["dampening"]), nesterov=bool(group["nesterov"]),
                      weight_decay=_value(group["weight_decay"]), maximize=bool(group["maximize"]),
                      step=1 if count == 0 else 2)
        return self._kernel, kwargs


class AdaptiveSGD(SGD):
    """SGD at the adaptive rate ``lr_t = lr / (1 + ||g||^2)`` through
    :func:`fusedopt.adaptive_sgd_` (no torch counterpart; SGD's arguments and state).

    ``||g||`` is the L2 norm of all the gradients of the step. Where the step is one call
    (one param group, or groups with equal hyperparameters), the kernel computes it in its
    fixed blocking; where it needs several (groups that differ in lr, momentum, weight
    decay...), it is summed in float64 over all of them first, and each group steps at its
    own ``lr / (1 + ||g||^2)``. ``last_rate`` holds the last step's
    :class:`fusedopt.AdaptiveRate` (of its first call)."""

    _kernel = staticmethod(fusedopt.adaptive_sgd_)
    last_rate = None

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None,
                 skip_if_nonfinite=False, max_grad_norm=None,
                 rounding="nearest", state_rounding="nearest", seed=0, state_dtype=None, master_weights=None):
        self.last_rate = None
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov, maximize=maximize,
                         foreach=foreach, differentiable=differentiable, fused=fused,
                         skip_if_nonfinite=skip_if_nonfinite, max_grad_norm=max_grad_norm,
                         rounding=rounding, state_rounding=state_rounding, seed=seed,
                         state_dtype=state_dtype, master_weights=master_weights)

    def _fused_step(self) -> None:
        plan = self._plan_for_step()
        calls = {(tuple(self._call(self.param_groups[u.group], u.count)[1].items()), u.key)
                 for u in plan.units}
        if len(calls) <= 1:  # one call: the kernel norms the gradients itself
            super()._fused_step()
            if self._last_result is not None:
                self.last_rate = self._last_result
            return
        # Several calls: one norm over all of them first, then SGD at each group's rate.
        grads = [_local(g) for u in plan.units for g in map(_grad_of, u.params)]
        sum_sq = math.fsum(float(torch.sum(torch.square(g.to(torch.float64)))) for g in grads)
        if not math.isfinite(sum_sq):
            if self._skip:
                self.last_step_skipped = True
                return
            raise ValueError("AdaptiveSGD: the gradients hold NaN or inf, so the rate "
                             "lr / (1 + ||g||^2) is not a number; nothing was written. Pass "
                             "skip_if_nonfinite=True to skip such steps")
        norm = math.sqrt(sum_sq)
        scaling = self._step_scaling()
        if scaling:
            # The rate sees the gradients as the kernels read them: unscaled and clipped.
            checked = fusedopt._coeffs.grad_scaling("AdaptiveSGD", scaling.get("grad_scale"),
                                                    scaling.get("found_inf"), self.max_grad_norm, None)
            if checked.found_inf:
                self.last_step_skipped = True
                return
            norm = checked.unscaled_norm(sum_sq)
            sum_sq = (norm * checked.multiplier(norm) * checked.grad_scale) ** 2
        self._sum_sq = sum_sq
        try:
            SGD._fused_step(self)
        finally:
            self._sum_sq = None
        first = self.param_groups[plan.units[0].group]
        self.last_rate = fusedopt.AdaptiveRate(_value(first["lr"]) / (1.0 + sum_sq), norm)

    _sum_sq = None

    def _call(self, group, count):
        kernel, kwargs = super()._call(group, count)
        if self._sum_sq is not None:
            kwargs["lr"] = kwargs["lr"] / (1.0 + self._sum_sq)
            return fusedopt.sgd_, kwargs
        return kernel, kwargs


class Adagrad(_FusedOptimizer):
    """``torch.optim.Adagrad`` through :func:`fusedopt.adagrad_`: the same arguments and
    state (``step``, ``sum``), made for every param when the optimizer is made, as torch
    does."""

    _eager_state = True

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None,
                 skip_if_nonfinite=False, max_grad_norm=None,
                 rounding="nearest", state_rounding="nearest", seed=0, state_dtype=None, master_weights=None):
        name = type(self).__name__
        _check_lr(name, lr)
        _check_at_least(name, "lr_decay value", lr_decay)
        _check_at_least(name, "weight_decay value", weight_decay)
        _check_at_least(name, "initial_accumulator_value", initial_accumulator_value)
        _check_at_least(name, "epsilon value", eps)
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, skip_if_nonfinite, max_grad_norm,
                         (rounding, state_rounding, seed), state_dtype, master_weights)

    def _layout(self, group):
        return ("sum",)

    def share_memory(self) -> None:
        """Moves the ``sum`` states into shared memory, as torch's Adagrad does (for
        Hogwild-style training across processes)."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    def _initial(self, group, key):
        return float(group["initial_accumulator_value"])

    def _call(self, group, count):
        kwargs = dict(lr=_value(group["lr"]), lr_decay=float(group["lr_decay"]),
                      weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                      maximize=bool(group["maximize"]), step=count + 1)
        return fusedopt.adagrad_, kwargs


class RMSprop(_FusedOptimizer):
    """``torch.optim.RMSprop`` through :func:`fusedopt.rmsprop_`: the same arguments and
    state (``step``, ``square_avg``, ``momentum_buffer`` where momentum > 0, ``grad_avg``
    where centered)."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, skip_if_nonfinite=False, max_grad_norm=None,
                 rounding="nearest", state_rounding="nearest", seed=0, state_dtype=None, master_weights=None):
        name = type(self).__name__
        _check_lr(name, lr)
        _check_at_least(name, "epsilon value", eps)
        _check_at_least(name, "momentum value", momentum)
        _check_at_least(name, "weight_decay value", weight_decay)
        _check_at_least(name, "alpha value", alpha)
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults, skip_if_nonfinite, max_grad_norm,
                         (rounding, state_rounding, seed), state_dtype, master_weights)

    def _layout(self, group):
        keys = ["square_avg"]
        if group["momentum"] > 0:
            keys.append("momentum_buffer")
        if group["centered"]:
            keys.append("grad_avg")
        return tuple(keys)

    def _call(self, group, count):
        kwargs = dict(lr=_value(group["lr"]), alpha=float(group["alpha"]), eps=float(group["eps"]),
                      weight_decay=float(group["weight_decay"]), momentum=float(group["momentum"]),
                      centered=bool(group["centered"]), maximize=bool(group["maximize"]))
        return fusedopt.rmsprop_, kwargs


class Adam(_FusedOptimizer):
    """``torch.optim.Adam`` through :func:`fusedopt.adam_` (:func:`fusedopt.adamw_` with
    ``decoupled_weight_decay=True``): the same arguments and state (``step``, ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq`` with amsgrad)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 skip_if_nonfinite=False, max_grad_norm=None,
                 rounding="nearest", state_rounding="nearest", seed=0, state_dtype=None, master_weights=None):
        betas = _check_adam_like(type(self).__name__, lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, skip_if_nonfinite, max_grad_norm,
                         (rounding, state_rounding, seed), state_dtype, master_weights)

    def _layout(self, group):
        if group["amsgrad"]:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")

    def _call(self, group, count):
        b1, b2 = group["betas"]
        kwargs = dict(lr=_value(group["lr"]), betas=(_value(b1), _value(b2)), eps=float(group["eps"]),
                      weight_decay=float(group["weight_decay"]), amsgrad=bool(group["amsgrad"]),
                      maximize=bool(group["maximize"]), step=count + 1)
        kernel = fusedopt.adamw_ if group.get("decoupled_weight_decay") else fusedopt.adam_
        return kernel, kwargs


class AdamW(Adam):
    """``torch.optim.AdamW`` through :func:`fusedopt.adamw_` (decoupled weight decay,
    default 1e-2)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, skip_if_nonfinite=False, max_grad_norm=None,
                 rounding="nearest", state_rounding="nearest", seed=0, state_dtype=None, master_weights=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True,
                         skip_if_nonfinite=skip_if_nonfinite, max_grad_norm=max_grad_norm,
                         rounding=rounding, state_rounding=state_rounding, seed=seed,
                         state_dtype=state_dtype, master_weights=master_weights)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


class Lion(_FusedOptimizer):
    """Lion (Chen et al. 2023) through :func:`fusedopt.lion_`; torch has none. State:
    ``exp_avg`` (the momentum), no step count. Defaults lr=1e-4, betas=(0.9, 0.99),
    weight_decay=0.0 (decoupled, as AdamW's)."""

    _has_step = False

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False,
                 foreach=None, differentiable=False, fused=None, skip_if_nonfinite=False, max_grad_norm=None,
                 rounding="nearest", state_rounding="nearest", seed=0, state_dtype=None, master_weights=None):
        name = type(self).__name__
        _check_lr(name, lr)
        betas = _check_betas(name, betas)
        _check_at_least(name, "weight_decay value", weight_decay)
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, skip_if_nonfinite, max_grad_norm,
                         (rounding, state_rounding, seed), state_dtype, master_weights)

    def _layout(self, group):
        return ("exp_avg",)

    def _count_of(self, st):
        return 0

    def _call(self, group, count):
        b1, b2 = group["betas"]
        kwargs = dict(lr=_value(group["lr"]), betas=(_value(b1), _value(b2)),
                      weight_decay=float(group["weight_decay"]), maximize=bool(group["maximize"]))
        return fusedopt.lion_, kwargs


class LAMB(_FusedOptimizer):
    """LAMB (You et al. 2020) through :func:`fusedopt.lamb_`; torch has none. State: ``step``,
    ``exp_avg``, ``exp_avg_sq``. Defaults are Apex's FusedLAMB (those of
    :func:`fusedopt.lamb_`): lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01
    (decoupled, inside the trust-ratio update). The trust ratio is per param tensor."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, *,
                 maximize=False, foreach=None, differentiable=False, fused=None,
                 skip_if_nonfinite=False, max_grad_norm=None, rounding="nearest",
                 state_rounding="nearest", seed=0, state_dtype=None, master_weights=None):
        betas = _check_adam_like(type(self).__name__, lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, skip_if_nonfinite, max_grad_norm,
                         (rounding, state_rounding, seed), state_dtype, master_weights)

    def _layout(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _call(self, group, count):
        b1, b2 = group["betas"]
        kwargs = dict(lr=_value(group["lr"]), betas=(_value(b1), _value(b2)), eps=float(group["eps"]),
                      weight_decay=float(group["weight_decay"]), maximize=bool(group["maximize"]),
                      step=count + 1)
        return fusedopt.lamb_, kwargs


# ---------------------------------------------------------------------------------------
class _Described(_FusedOptimizer):
    """A torch.optim class through the kernel its rule's description names
    (fusedopt/rules/): torch's own constructor checks the arguments and gives the defaults
    (on a stand-in param), the states are the rule's under torch's singular keys, and a
    group's hyperparameters are the kernel's keywords of the same names."""

    _torch_class: Any = None
    _kernel_name = ""

    def __init__(self, params, *args, skip_if_nonfinite=False, max_grad_norm=None, rounding="nearest",
                 state_rounding="nearest", seed=0, state_dtype=None, master_weights=None, **kwargs):
        probe = self._torch_class([torch.zeros(1, requires_grad=True)], *args, **kwargs)
        super().__init__(params, dict(probe.defaults), skip_if_nonfinite, max_grad_norm,
                         (rounding, state_rounding, seed), state_dtype, master_weights)

    def _layout(self, group):
        return self._keys

    def _state_shape(self, p, key):
        return self._rule.state_shapes(p.shape)[self._keys.index(key)]

    def _call(self, group, count):
        kwargs = {}
        for k, default in self._keywords.items():
            v = group[k]  # pairs (betas; Adafactor's eps, whose first may be None) as floats
            kwargs[k] = (tuple(b if b is None else _value(b) for b in v) if isinstance(v, (tuple, list))
                         else bool(v) if isinstance(default, bool) else _value(v))
        if self._takes_step:
            kwargs["step"] = count + 1
        return self._kernel, kwargs


def _described(name: str, kernel_name: str, **extra) -> type:
    import inspect

    torch_class = getattr(torch.optim, name)
    rule, kernel = fusedopt.rules.kernel(kernel_name)
    keys = tuple(s[:-1] for s in rule.states)  # torch's key: exp_infs -> exp_inf
    signature = inspect.signature(torch_class)
    state_keys = ("step",) + keys + tuple(extra.get("_scalar_states", ()))
    signature = signature.replace(parameters=[
        *signature.parameters.values(),
        inspect.Parameter("skip_if_nonfinite", inspect.Parameter.KEYWORD_ONLY, default=False),
        inspect.Parameter("max_grad_norm", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("rounding", inspect.Parameter.KEYWORD_ONLY, default="nearest"),
        inspect.Parameter("state_rounding", inspect.Parameter.KEYWORD_ONLY, default="nearest"),
        inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, default=0),
        inspect.Parameter("state_dtype", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("master_weights", inspect.Parameter.KEYWORD_ONLY, default=None)])
    attrs = dict(
        _torch_class=torch_class, _kernel=staticmethod(getattr(fusedopt, kernel.name)),
        _keys=keys, _state_args={**_FusedOptimizer._state_args, **dict(zip(keys, rule.states))},
        _keywords={k: v for k, v in kernel.keywords.items() if k not in ("step", "mu_product")},
        _takes_step=kernel.takes_step, _rule=rule, __signature__=signature, __module__=__name__,
        __qualname__=name,
        __doc__=f"``torch.optim.{name}`` through :func:`fusedopt.{kernel.name}`: torch's arguments, "
                f"defaults, checks and state ({', '.join(f'``{k}``' for k in state_keys)}).")
    attrs.update(extra)
    return type(name, (_Described,), attrs)


def _nadam_unit_call(self, unit):
    kernel, kwargs = self._call(self.param_groups[unit.group], unit.count)
    # The product torch keeps per param (a unit's params share their step and history).
    kwargs["mu_product"] = min(1.0, float(unit.scalars["mu_product"][0]))
    return kernel, kwargs


def _nadam_advance(self, unit):
    group = self.param_groups[unit.group]
    beta1, psi = _value(group["betas"][0]), _value(group["momentum_decay"])
    unit.scalars["mu_product"].mul_(beta1 * (1.0 - 0.5 * 0.96 ** (unit.count * psi)))


Adamax = _described("Adamax", "adamax_")
NAdam = _described("NAdam", "nadam_", _scalar_states={"mu_product": 1.0},
                   _unit_call=_nadam_unit_call, _advance_scalars=_nadam_advance)
RAdam = _described("RAdam", "radam_")
Adadelta = _described("Adadelta", "adadelta_")
# Adafactor's states are shaped as torch's: row_var [..., R, 1] and col_var [..., 1, C] for
# a param of two or more dims, variance for the others (the rule's state_shapes). Params
# must be C-contiguous: the factors follow the last two dims as the param's shape says.
# GradScaler unscales Adafactor's gradients itself: its passes take no loss scale.
Adafactor = _described("Adafactor", "adafactor_", _step_supports_amp_scaling=False)
__all__ += ["Adamax", "NAdam", "RAdam", "Adadelta", "Adafactor"]

"""fusedopt.torch under torch.distributed on the CPU (gloo, 2 processes): as the
optimizer_class of ZeroRedundancyOptimizer, under DistributedDataParallel, and on FSDP2
(fully_shard, DTensor params whose local shards the step updates), including a checkpoint
taken with torch.distributed.checkpoint's state_dict helpers and resumed by torch's AdamW.

One spawn of 2 processes runs every setup in turn (starting processes that import torch is
most of the cost); each setup trains the same small model from the same weights on halves
of the same batches, and its final full params are compared with one process training on
the whole batches with torch.optim.AdamW (1e-4 relative: the reductions may add in another
order).
"""

from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed; fusedopt.torch needs it")
dist = pytest.importorskip("torch.distributed", reason="this torch has no torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

WORLD = 2
STEPS = 6
RTOL = 1e-4
SETUPS = ("ddp", "zero", "fsdp2", "fsdp2-dcp")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 8, generator=gen), torch.randn(8, 4, generator=gen)) for _ in range(STEPS)]


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def _reference():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    for x, y in _batches():
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _sharded(model):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _steps(model, opt, batches, rank):
    for x, y in batches:
        half = slice(rank * 4, rank * 4 + 4)
        opt.zero_grad()
        _loss(model, x[half], y[half]).backward()
        opt.step()


def _train(setup, rank):
    import fusedopt.torch as ft

    model = _model()
    kw = dict(lr=1e-2, weight_decay=0.1)
    if setup == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
        opt = ft.AdamW(model.parameters(), **kw)
    elif setup == "zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        model = torch.nn.parallel.DistributedDataParallel(model)
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=ft.AdamW, **kw)
    else:
        model = _sharded(model)
        opt = ft.AdamW(model.parameters(), **kw)
    batches = _batches()
    if setup == "fsdp2-dcp":
        # Half the run with fusedopt, a checkpoint through torch.distributed.checkpoint's
        # state_dict helpers, and the other half with torch's AdamW on a new sharded model.
        from torch.distributed.checkpoint import state_dict as dcp_sd

        _steps(model, opt, batches[:STEPS // 2], rank)
        model_sd = dcp_sd.get_model_state_dict(model)
        opt_sd = dcp_sd.get_optimizer_state_dict(model, opt)
        model = _sharded(_model())
        opt = torch.optim.AdamW(model.parameters(), foreach=False, **kw)
        dcp_sd.set_model_state_dict(model, model_sd)
        dcp_sd.set_optimizer_state_dict(model, opt, opt_sd)
        batches = batches[STEPS // 2:]
    _steps(model, opt, batches, rank)
    extra = {}
    if setup == "zero":
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            sd = opt.state_dict()
            # The consolidated state_dict loads into torch's own AdamW.
            plain = _model()
            theirs = torch.optim.AdamW(plain.parameters(), **kw)
            theirs.load_state_dict(sd)
            extra["steps"] = sorted({float(s["step"]) for s in theirs.state.values()})
    if setup.startswith("fsdp2"):
        extra["dtensor"] = type(next(model.parameters())).__name__
        full = [p.full_tensor().detach().clone() for p in model.parameters()]
    else:
        full = [p.detach().clone() for p in model.parameters()]
    return full, extra


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for setup in SETUPS:
            try:
                results[setup] = _train(setup, rank)
            except Exception as exc:  # reported by the test that reads it
                results[setup] = f"{type(exc).__name__}: {exc}"
            dist.barrier()
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "results.pt"))
    finally:
        dist.destroy_process_group()
    # The results are saved: leave without the interpreter's teardown. In it, a gloo thread
    # of torch may still free the last barrier's work, whose tensors need the GIL that the
    # finalizing interpreter no longer gives: the process then aborts ("terminate called
    # without an active exception", about one run in ten here; the core dump shows it in
    # ProcessGroupGloo::runLoop destroying an AsyncBarrierWork).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import torch.multiprocessing as mp

    where = tmp_path_factory.mktemp("dist")
    sys.path.insert(0, os.path.dirname(__file__))  # the children import this module
    try:
        mp.spawn(_worker, args=(str(where / "init"), str(where)), nprocs=WORLD, join=True)
    finally:
        sys.path.remove(os.path.dirname(__file__))
    return torch.load(where / "results.pt"), _reference()


def _check(results, setup):
    got, ref = results
    outcome = got[setup]
    assert not isinstance(outcome, str), outcome
    params, extra = outcome
    a = torch.cat([p.reshape(-1).double() for p in params])
    b = torch.cat([p.reshape(-1).double() for p in ref])
    assert float((a - b).norm() / b.norm()) <= RTOL
    return extra


def test_under_ddp(results):
    _check(results, "ddp")


def test_as_zero_redundancy_optimizer_class(results):
    extra = _check(results, "zero")
    assert extra["steps"] == [float(STEPS)]


def test_on_fsdp2_local_shards(results):
    extra = _check(results, "fsdp2")
    assert extra["dtensor"] == "DTensor"


def test_fsdp2_checkpoint_through_dcp_resumes_with_torch(results):
    _check(results, "fsdp2-dcp")

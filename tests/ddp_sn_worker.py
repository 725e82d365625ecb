"""Run by tests/test_sn_distributed.py as a subprocess: two gloo processes check per-process
and synchronized SN statistics, and update_stats, against one process computing the same."""
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sn

WORLD, S, C = 2, 3, 6


def make_layer(**kw):
    torch.manual_seed(0)
    layer = sn.SwitchNorm2d(C, **kw).double()
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -0.5, 0.8])), layer.var_weight.copy_(torch.tensor([-0.2, 0.4, 0.1]))
        layer.weight.uniform_(0.5, 1.5), layer.bias.normal_()
    return layer


def full_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * S, C, 4, 3, generator=g, dtype=torch.float64) * 2 + 5
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x, grad


def run(layer, x, grad):
    x = x.clone().requires_grad_()
    out = layer(x)
    out.backward(grad)
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


def check(name, got, want):
    if not torch.allclose(got, want, atol=1e-10, rtol=1e-9):
        raise AssertionError(f"{name}: max difference {(got - want).abs().max().item()}")


def compare(tag, rank, reference_layer, distributed_layer):
    x, grad = full_batch()
    ref_out, ref_gx, ref_gp = run(reference_layer, x, grad)
    part = slice(rank * S, (rank + 1) * S)
    out, gx, gp = run(distributed_layer, x[part], grad[part])
    check(f"{tag} output", out, ref_out[part])
    check(f"{tag} input gradient", gx, ref_gx[part])
    for n, g in gp.items():  # parameter gradients summed over processes, as DDP does before averaging
        dist.all_reduce(g)
        check(f"{tag} {n} gradient", g, ref_gp[n])
    running = distributed_layer.running_mean.clone()
    if tag == "per-process":  # each process tracks its own chunk; their average is the reference's
        dist.all_reduce(running)
        running /= WORLD
    check(f"{tag} running_mean", running, reference_layer.running_mean)


def worker(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        # per-process statistics: 2 processes x S samples == one process with devices=2
        compare("per-process", rank, make_layer(devices=WORLD), make_layer())
        # synchronized: 2 processes x S samples == one process over the full batch
        compare("sync", rank, make_layer(), make_layer(sync=True))
        # update_stats averages over every process's batches
        g = torch.Generator().manual_seed(2)
        batches = [torch.randn(4, C, 3, 3, generator=g, dtype=torch.float64) + i for i in range(2 * WORLD)]
        layer = make_layer()
        sn.update_stats(layer, batches[rank * 2:(rank + 1) * 2], num_batches=2)
        expected = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
        check("update_stats running_mean", layer.running_mean, expected)
        expected_var = torch.stack([b.var((0, 2, 3)) for b in batches]).mean(0)
        check("update_stats running_var", layer.running_var, expected_var)
        print(f"rank {rank}: all checks passed", flush=True)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    torch.set_num_threads(1)
    mp.spawn(worker, args=(free_port(),), nprocs=WORLD, join=True)
    sys.exit(0)

"""Under torch.distributed every rank takes the same decisions, though each sees other data."""

import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import forecache.core as fc
from forecache.core.testing.toy import ToyAdapter, ToyTransformer, sample, toy_inputs

STEPS = torch.linspace(1.0, 0.05, 12)


def decisions(seed: int, policy) -> list[bool]:
    torch.manual_seed(0)
    model = ToyTransformer().eval()
    handle = fc.apply(model, policy, ToyAdapter())
    sample(model, toy_inputs(batch=1, seed=seed), STEPS)
    out = [d.computed for d in handle.trace()]
    handle.remove()
    return out


def _rank(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
            json.dump(decisions(seed=10 + rank, policy=fc.teacache(0.3)), f)
        dist.barrier()  # no rank tears gloo down while the other still talks
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_decide_alike_with_two_gloo_processes(tmp_path):
    alone = [decisions(seed=10 + r, policy=fc.teacache(0.3)) for r in range(2)]
    assert alone[0] != alone[1], "the two ranks' data must lead to different local decisions"
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    assert not all(ranks[0]), "the averaged metric must still let steps be cached"

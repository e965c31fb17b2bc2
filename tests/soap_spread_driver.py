"""SOAP with its refresh spread over two ranks, for tests/test_soap.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/soap_spread_driver.py OUT_DIR

Every rank trains the same small model on the same batches (the gradients DDP would give it), once
with the refresh spread and once with every rank refreshing everything, and saves the parameters and
how many eigenbasis computations it ran to OUT_DIR/rank{RANK}.pt.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optim.soap import SOAP  # noqa: E402


def run(spread: bool, steps: int = 10) -> tuple[list[torch.Tensor], int]:
    """Parameters after ``steps`` SOAP steps, and how many first bases and refreshes this process ran."""
    torch.manual_seed(0)
    # sides of 16, 24, 8 and 4 (and one over max_precond_dim), so the shares differ in cost
    model = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 8), nn.Tanh(), nn.Linear(8, 4))
    opt = SOAP(model.parameters(), lr=0.01, precondition_frequency=3, max_precond_dim=20, spread_refresh=spread)
    calls = 0
    for name in ("_first_basis", "_refresh"):
        work = getattr(opt, name)

        def counted(state: dict, work=work) -> None:
            nonlocal calls
            calls += 1
            work(state)

        setattr(opt, name, counted)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 16, generator=g)
        loss = (model(x) - x[:, :4].sin()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], calls


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    result = {}
    for key, spread in (("spread", True), ("every", False)):
        result[key], result[f"{key}_calls"] = run(spread)
    torch.save(result, Path(sys.argv[1]) / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

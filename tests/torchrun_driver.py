"""Several trainings in one torchrun launch, for tests/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/torchrun_driver.py PLAN.json OUT_DIR

PLAN.json maps a scenario name to {"argv": [...], "fault": "nan@3" or ""}; each rank writes the exit code
of every scenario to OUT_DIR/codes_rank{RANK}.json. One launch saves the launcher's start-up per run.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.distributed as dist  # noqa: E402

import train  # noqa: E402

from helpers import Fault  # noqa: E402


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo")  # shared by the scenarios: train.main leaves a caller's group alone
    codes = {}
    for name, scenario in plan.items():
        hooks = [Fault(scenario["fault"])] if scenario.get("fault") else []
        codes[name] = train.main(scenario["argv"], hooks=hooks)
    Path(sys.argv[2], f"codes_rank{os.environ['RANK']}.json").write_text(json.dumps(codes))
    dist.destroy_process_group()
    train.exit_process(0)  # as train.py ends a distributed run, for the reason given there


if __name__ == "__main__":
    main()

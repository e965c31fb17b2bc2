"""Train: a config builds a Task, the Trainer runs it (see trainer/ and tasks/).

    python train.py [CONFIG] [--section.key=value ...]        # default: configs/quickstart.toml
    torchrun --standalone --nproc_per_node=N train.py CONFIG   # DDP (NCCL on GPU, gloo on CPU)
    accelerate launch --multi_gpu --num_processes=N train.py CONFIG
    python train.py CONFIG --run.resume=true                   # continue from the latest good checkpoint

``python train.py --help`` lists the exit codes.
"""

from trainer import exit_process, ignore_stop_signals, main

if __name__ == "__main__":
    code = main()
    ignore_stop_signals()
    exit_process(code)

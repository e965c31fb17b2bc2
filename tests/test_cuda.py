"""What only a GPU can check: bf16 autocast with fp32 state, inductor without graph breaks, SDPA's fused
kernels with the biases on, the optimizers and the export on the device, and the steps' host syncs.

Skipped without CUDA; ``python bench/gpu_check.py`` runs this file on a GPU and reports each test.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch._dynamo
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoModelForCausalLM

import optim
from configs import SymmetryConfig
from model import GPT, BiasDraws, GPTConfig, draw_biases
from model.hf import export
from model.symmetry import STREAMS, _bits, _micro_words, _seed_key
from runtime import count_host_syncs
from trainer import Trainer

from helpers import args, train_config

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (python bench/gpu_check.py runs these on one)"
)
CUDA = torch.device("cuda")


@pytest.fixture
def no_tf32():
    """Full fp32 matmuls (the trainer turns TF32 on for the whole process), so CPU and GPU compare closely."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def gpt(mode: str = "bqbv") -> GPT:
    """Head dim 64, as GPT-2's, so the fused attention kernels apply."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=96, block_size=64, n_layer=2, n_head=2, n_embd=128, symmetry=SymmetryConfig(mode=mode))
    return GPT(cfg).to(CUDA)


def tokens(batch: int = 4, length: int = 64) -> torch.Tensor:
    return torch.randint(0, 96, (batch, length), generator=torch.Generator().manual_seed(1)).to(CUDA)


# ----------------------------------------------------------------------------------- precision


OPTIMIZER_RUNS = {
    "adamw": [],
    "sgdm": ["--optim.lr=0.1"],
    "soap": ["--optim.lr=3e-3", "--optim.soap.precondition_frequency=3"],
    "ecd": ["--optim.lr=0.1", "--optim.grad_clip=0", "--optim.ecd.on_low_loss=clamp"],
}


def cuda_trainer(data_dir, root, name: str, *extra: str, steps: int = 6) -> Trainer:
    cfg = train_config("quickstart.toml", args(data_dir, root, name, "--run.device=cuda", *extra, steps=steps))
    return Trainer(cfg)


@pytest.mark.parametrize("name", sorted(OPTIMIZER_RUNS))
def test_bf16_autocast_trains_with_fp32_weights_and_optimizer_state(data_dir, tmp_path, name):
    trainer = cuda_trainer(data_dir, tmp_path, name, f"--optim.name={name}", *OPTIMIZER_RUNS[name])
    summary = trainer.run()
    assert trainer.ctx.dtype is torch.bfloat16  # run.dtype=auto on CUDA
    assert math.isfinite(summary["final_val_loss"]) and summary["steps"] == 6
    assert trainer.ctx.device.type == CUDA.type
    assert all(p.dtype == torch.float32 and p.device == trainer.ctx.device for p in trainer.model.parameters())
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1]
    state += [t for t in vars(trainer.optimizer).values() if torch.is_tensor(t) and t.numel() > 1]  # ECD's velocity
    assert state and all(t.dtype == torch.float32 for t in state)
    if name == "adamw":
        assert trainer.optimizer.defaults["fused"]
    x = tokens(2, 32)
    with trainer.ctx.autocast():
        logits, loss = trainer.model(x, x, trainer.task.biases(0))
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32  # the loss is taken in fp32


# ----------------------------------------------------------------------------------- compile


def test_compiled_bqbv_forward_has_no_graph_break_or_recompile_under_inductor(no_tf32):
    model, x = gpt("bqbv"), tokens()
    draws = BiasDraws(model.bias_spec, seed=0, device=CUDA)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # inductor; fullgraph raises on any graph break
    loss = compiled(x, x, draws(0))[1]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    eager = model(x, x, draws(0))[1]
    eager.backward()
    torch.testing.assert_close(loss, eager, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    with mock_setting(torch._dynamo.config, "error_on_recompile", True):  # a fresh draw each micro-batch
        for m in range(1, 6):
            compiled(x, x, draws(m))[1].backward()


@contextlib.contextmanager
def mock_setting(obj, name: str, value):
    before = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, before)


def test_cuda_graphs_train_like_eager(no_tf32):
    """torch.compile's reduce-overhead mode (CUDA graphs) gives the eager steps' losses and weights."""
    losses, weights = {}, {}
    for compiled in (False, True):
        model, x = gpt(), tokens()
        start = [p.detach().clone() for p in model.parameters()]
        draws = BiasDraws(model.bias_spec, seed=0, device=CUDA)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)  # smooth in the gradient, unlike Adam's first steps
        run = torch.compile(model, mode="reduce-overhead") if compiled else model
        torch._dynamo.reset()
        losses[compiled] = []
        for m in range(6):
            loss = run(x, x, draws(m))[1]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[compiled].append(loss.item())
        weights[compiled] = [p.detach() for p in model.parameters()]
        assert max((p - s).abs().max().item() for p, s in zip(weights[compiled], start)) > 1e-3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
    for a, b in zip(weights[True], weights[False]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("mode", ["bqbv", "bq", "symmetric"])
def test_sdpa_runs_a_fused_kernel_with_the_biases_on(mode):
    """SDPA restricted to one backend raises when that backend cannot run: passing proves the flash (or
    cuDNN) kernel ran, forward and backward, under the trainer's bf16 autocast."""
    model, x = gpt(mode), tokens()
    biases = draw_biases(model.bias_spec, seed=0, micro_index=0, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel([SDPBackend.MATH]):
            want = model(x, x, biases)[1]
        ran = []
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            try:
                with sdpa_kernel([backend]):
                    loss = model(x, x, biases)[1]
                    loss.backward()
            except RuntimeError:
                continue
            ran.append(backend.name)
            torch.testing.assert_close(loss, want, atol=2e-2, rtol=2e-2)  # bf16 attention against the math one
    assert ran, "neither the flash nor the cuDNN attention kernel accepted the model's q, k, v"


# ----------------------------------------------------------------------------------- optimizers


def optimizer_run(name: str, device, dtype=torch.float32, steps: int = 7, **options) -> list[torch.Tensor]:
    """``steps`` steps of an optimizer from fixed parameters and gradients drawn on the CPU.

    Square matrices only: SOAP's eigenbasis of a rank-deficient Gram matrix is arbitrary inside its null
    space, so CPU and GPU could pick different, equally valid bases there."""
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 16), (24, 24), (16,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype)) for s in shapes]
    cfg = optim.config(name, **options)
    opt = optim.build_optimizer([{"params": params, "weight_decay": 0.01}], cfg)
    for _ in range(steps):
        for p in params:
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64) + 0.1 * p.detach().cpu().double()
            p.grad = grad.to(device, dtype)
        if getattr(opt, "requires_loss", False):
            opt.step(loss=torch.tensor(5.0, dtype=dtype, device=device))
        else:
            opt.step()
    return [p.detach().cpu().double() for p in params]


OPTIMIZER_OPTIONS = {
    # eps 1e-3, not 1e-8: SOAP's first step projects the gradient onto its own eigenbasis, where every
    # off-diagonal entry is 0 up to rounding, and Adam scales that rounding noise up to lr-sized steps
    # unless eps damps it; with eps 1e-8 two fp32 runs (CPU, GPU or fp64) then differ by ~2.5 lr.
    "soap": dict(lr=1e-2, precondition_frequency=3, eps=1e-3),
    "ecd": dict(lr=0.5, weight_decay=0.01),
    "ecd-per_tensor": dict(lr=0.5, per_tensor=True),
}
# About 20x the largest fp32-vs-fp64 gap of these runs on the CPU (8.3e-5 SOAP, 5.9e-7 ECD), while the
# 7 steps move every tensor by at least 0.048
OPTIMIZER_ATOL = {"soap": 2e-3, "ecd": 1.5e-5, "ecd-per_tensor": 1.5e-5}


@pytest.mark.parametrize("variant", sorted(OPTIMIZER_OPTIONS))
def test_ecd_and_soap_on_cuda_equal_their_cpu_steps(no_tf32, variant):
    name = variant.split("-")[0]
    on_cpu = optimizer_run(name, "cpu", **OPTIMIZER_OPTIONS[variant])
    on_gpu = optimizer_run(name, CUDA, **OPTIMIZER_OPTIONS[variant])
    start = optimizer_run(name, "cpu", steps=0, **OPTIMIZER_OPTIONS[variant])
    for a, b, s in zip(on_cpu, on_gpu, start):
        assert (a - s).abs().max() > 20 * OPTIMIZER_ATOL[variant]  # the steps moved the weights
        torch.testing.assert_close(b, a, atol=OPTIMIZER_ATOL[variant], rtol=0)


# ----------------------------------------------------------------------------------- bias draws


def test_device_draws_are_the_cpu_draws():
    spec = gpt("bqbv").bias_spec
    micro = torch.arange(100, dtype=torch.int64)
    counter = torch.arange(2 * spec.n_layer * len(STREAMS) * spec.heads * spec.head_dim, dtype=torch.int64)

    def bits_on(device) -> torch.Tensor:
        a0, a1 = _micro_words(*_seed_key(3), micro.to(device))
        return _bits(counter.to(device)[None], a0[:, None], a1[:, None]).cpu()

    assert torch.equal(bits_on(CUDA), bits_on("cpu"))  # the integer stage is exact: the same bits on both
    on_gpu, on_cpu = BiasDraws(spec, 3, CUDA, stride=2), BiasDraws(spec, 3, "cpu", stride=2)
    for m in range(0, 200, 2):  # float64 Box-Muller rounded to float32: equal but for a last bit, rarely
        a, b = on_gpu(m), on_cpu(m)
        for k in a:
            torch.testing.assert_close(a[k].cpu(), b[k], atol=2e-7, rtol=0)
    single = draw_biases(spec, 3, 42, CUDA)
    assert all(torch.equal(single[k], on_gpu(42)[k]) for k in single)  # chunked = single on the GPU too


# ----------------------------------------------------------------------------------- host syncs


SYNC_FREE = {
    "adamw": [],
    "sgdm": ["--optim.lr=0.1"],
    "soap": ["--optim.lr=3e-3"],  # refresh every 10 steps: steps 4-8 are plain ones
    "ecd-clamp": ["--optim.name=ecd", "--optim.lr=0.1", "--optim.grad_clip=0", "--optim.ecd.on_low_loss=clamp"],
}


def started(data_dir, root, name: str, *extra: str, sync_interval: int = 1000) -> Trainer:
    """A trainer set up for a long run that logs nothing, ready for ``train_step``."""
    sync = [f"--train.sync_interval={sync_interval}", "--train.log_interval=1000"]
    t = cuda_trainer(data_dir, root, name, *sync, *extra, steps=1000)
    t.setup()
    t.start_training()
    return t


@pytest.mark.parametrize("variant", sorted(SYNC_FREE))
def test_steps_between_logging_make_no_host_sync(data_dir, tmp_path, variant):
    name = variant.split("-")[0]
    t = started(data_dir, tmp_path, variant, f"--optim.name={name}", *SYNC_FREE[variant])
    for _ in range(3):  # SOAP's first step runs eigh, which checks its result on the host
        t.train_step()
    with count_host_syncs() as syncs:
        for _ in range(5):
            t.train_step()
    assert syncs == []


def test_a_synced_step_makes_one_host_sync_and_ecd_its_policys_one(data_dir, tmp_path):
    t = started(data_dir, tmp_path, "synced", sync_interval=1)
    t.train_step()
    with count_host_syncs() as syncs:
        for _ in range(4):
            t.train_step()
    assert len(syncs) == 4  # the loss, stop flag and gradient norm read together
    e = started(data_dir, tmp_path, "ecd", "--optim.name=ecd", "--optim.lr=0.1", "--optim.grad_clip=0")
    e.train_step()
    with count_host_syncs() as syncs:
        for _ in range(4):
            e.train_step()
    assert len(syncs) == 4  # on_low_loss=error must see F - F0 > 0 before the weights move


# ----------------------------------------------------------------------------------- export


@pytest.mark.parametrize("mlp", ["prelu", "gelu"])
def test_exported_logits_and_cached_generation_on_cuda(no_tf32, tmp_path, mlp):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=128, mlp=mlp)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    export(model, tmp_path, eot=99)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=mlp == "prelu").to(CUDA).eval()
    model = model.to(CUDA)
    x = tokens(3, 32) % 100
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0][..., :100], atol=1e-4, rtol=0)
    prompt = x[:1, :5]
    new = 40 if mlp == "prelu" else 27  # our code slides its window past block_size; stock GPT-2 stops there
    ours = model.generate(prompt, new, temperature=0)
    assert torch.equal(model.generate(prompt, new, temperature=0, use_cache=False), ours)
    mask = torch.ones_like(prompt)
    for use_cache in (True, False):
        out = hf.generate(prompt, attention_mask=mask, max_new_tokens=new, do_sample=False, use_cache=use_cache)
        assert torch.equal(out, ours)

"""SOAP against a float64 transcription of the algorithm, and its contracts."""

import io
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn
from soap_spread_driver import run as run_spread_driver

from optim.soap import SOAP, balance

SPREAD_DRIVER = Path(__file__).with_name("soap_spread_driver.py")

# eps: on the first step the projected gradient Q_Lᵀ G Q_R is diagonal (an SVD), so its off-diagonal
# entries are pure roundoff, which Adam's G̃/(|G̃| + eps) amplifies by up to 1/eps; with eps = 1e-8 the two
# implementations agree to 5e-11, with 1e-6 to 5e-13. The code path is the same for any eps.
SETTINGS = dict(lr=0.02, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1, precondition_frequency=10, max_precond_dim=8)


def mlp() -> nn.Module:
    """An 8×8 layer (both sides preconditioned) and a 12×8 layer (12 > max_precond_dim: right side only)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 12)).double()


def batches(n: int):
    g = torch.Generator().manual_seed(2)
    target = torch.randn(12, 8, generator=g, dtype=torch.float64)
    for _ in range(n):
        x = torch.randn(64, 8, generator=g, dtype=torch.float64)
        yield x, torch.sin(x @ target.T)


def groups(model):
    mats = [p for p in model.parameters() if p.dim() == 2]
    vecs = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": mats}, {"params": vecs, "weight_decay": 0.0}]


def train(model, opt, steps, start=0):
    out = []
    for k, (x, y) in enumerate(batches(start + steps)):
        if k < start:
            continue
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


class ReferenceSOAP:
    """Written from the description, not from optim/soap.py: explicit identity matrices for sides
    without a preconditioner, and the first moment kept in the original space, projected each step."""

    def __init__(self, params, wds, lr, betas, eps, weight_decay, precondition_frequency, max_precond_dim):
        self.params, self.wds, self.lr, self.eps, self.k = params, wds, lr, eps, precondition_frequency
        self.b1, self.b2 = betas
        self.t = 0
        self.s = []
        for p in params:
            m, n = (p.shape[0], p.shape[1]) if p.dim() == 2 else (1, p.shape[0])
            self.s.append(
                {
                    "M": torch.zeros(m, n, dtype=torch.float64),
                    "V": torch.zeros(m, n, dtype=torch.float64),
                    "L": torch.zeros(m, m, dtype=torch.float64) if p.dim() == 2 and m <= max_precond_dim else None,
                    "R": torch.zeros(n, n, dtype=torch.float64) if p.dim() == 2 and n <= max_precond_dim else None,
                    "QL": torch.eye(m, dtype=torch.float64),
                    "QR": torch.eye(n, dtype=torch.float64),
                }
            )

    def step(self, grads):
        self.t += 1
        t, b1, b2 = self.t, self.b1, self.b2
        for p, grad, wd, s in zip(self.params, grads, self.wds, self.s):
            G = grad.reshape(s["M"].shape)
            if t == 1:
                for side, gram in (("L", G @ G.T), ("R", G.T @ G)):
                    if s[side] is not None:
                        s[side] = (1 - b2) * gram
                        vals, vecs = torch.linalg.eigh(s[side])
                        s["Q" + side] = vecs[:, torch.argsort(vals, descending=True)]
            Gt = s["QL"].T @ G @ s["QR"]
            s["M"] = b1 * s["M"] + (1 - b1) * G
            s["V"] = b2 * s["V"] + (1 - b2) * Gt**2
            Mt = s["QL"].T @ s["M"] @ s["QR"]
            adam = (Mt / (1 - b1**t)) / ((s["V"] / (1 - b2**t)).sqrt() + self.eps)
            U = s["QL"] @ adam @ s["QR"].T
            p.mul_(1 - self.lr * wd).sub_(self.lr * U.reshape(p.shape))
            if t > 1:
                for side, gram in (("L", G @ G.T), ("R", G.T @ G)):
                    if s[side] is not None:
                        s[side] = b2 * s[side] + (1 - b2) * gram
            if t % self.k == 0:
                for axis, side in ((0, "L"), (1, "R")):
                    if s[side] is None:
                        continue
                    Q = s["Q" + side]
                    order = torch.argsort(torch.diag(Q.T @ s[side] @ Q), descending=True)
                    s["V"] = s["V"][order, :] if axis == 0 else s["V"][:, order]
                    s["Q" + side], _ = torch.linalg.qr(s[side] @ Q[:, order])


@torch.no_grad()
def reference_run(steps, reference=None, settings=SETTINGS, decay_all=False):
    """The float64 transcription ``reference`` (default ReferenceSOAP) trained on the test's batches: the
    parameters after each step. Weight decay on matrices only, or on every parameter with ``decay_all``."""
    model = mlp()
    params = list(model.parameters())
    decays = [settings["weight_decay"] if decay_all or p.dim() == 2 else 0.0 for p in params]
    ref = (reference or ReferenceSOAP)(params, decays, **settings)
    out = []
    for x, y in batches(steps):
        with torch.enable_grad():
            for p in params:
                p.grad = None
            ((model(x) - y) ** 2).mean().backward()
        ref.step([p.grad for p in params])
        out.append([p.detach().clone() for p in params])
    return out


def test_equals_float64_reference_for_30_steps_across_eigenbasis_refreshes():
    model = mlp()
    opt = SOAP(groups(model), **SETTINGS)
    ours = train(model, opt, 30)
    ref = reference_run(30)
    state = opt.state[model[0].weight]
    assert {"q_left", "q_right"} <= set(state) and "q_left" not in opt.state[model[2].weight]
    for k, (a, b) in enumerate(zip(ours, ref)):
        for pa, pb in zip(a, b):
            assert (pa - pb).abs().max() < 1e-10, f"step {k + 1}"
    assert max((a - b).abs().max() for a, b in zip(ours[-1], mlp().parameters())) > 0.05  # it moved


class OriginalSOAP:
    """The original SOAP code's step, written from its description (module docstring of optim/soap.py),
    not from our code: M̃ is kept in the eigenbasis and carried through every preconditioner update by
    projecting it back to the original space and onto the (possibly refreshed) basis; the first step
    only fills the Gram matrices; eps on √V, both bias corrections in the step size; decay last."""

    def __init__(self, params, wds, lr, betas, eps, weight_decay, precondition_frequency, max_precond_dim):
        self.params, self.wds, self.lr, self.eps, self.k = params, wds, lr, eps, precondition_frequency
        self.b1, self.b2 = betas
        self.s = []
        for p in params:
            m, n = (p.shape[0], p.shape[1]) if p.dim() == 2 else (1, p.shape[0])
            has = [p.dim() == 2 and k <= max_precond_dim for k in (m, n)]
            L, R = (torch.zeros(k, k, dtype=torch.float64) if ok else None for k, ok in zip((m, n), has))
            state = {"t": 0, "ready": False, "L": L, "R": R, "QL": torch.eye(m, dtype=torch.float64)}
            state |= {"QR": torch.eye(n, dtype=torch.float64), "Mt": torch.zeros(m, n, dtype=torch.float64)}
            self.s.append({**state, "V": torch.zeros(m, n, dtype=torch.float64)})

    def _precondition(self, s, G):
        """Back to the original space, Gram update, eigenbasis (first call) or refresh, into the basis."""
        M = s["QL"] @ s["Mt"] @ s["QR"].T
        for side, gram in (("L", G @ G.T), ("R", G.T @ G)):
            if s[side] is not None:
                s[side] = self.b2 * s[side] + (1 - self.b2) * gram
        if not s["ready"]:
            for side in ("L", "R"):
                if s[side] is not None:
                    vals, vecs = torch.linalg.eigh(s[side])
                    s["Q" + side] = vecs[:, torch.argsort(vals, descending=True)]
            s["ready"] = True
        elif s["t"] % self.k == 0:
            for axis, side in ((0, "L"), (1, "R")):
                if s[side] is not None:
                    Q = s["Q" + side]
                    order = torch.argsort(torch.diag(Q.T @ s[side] @ Q), descending=True)
                    s["V"] = s["V"][order, :] if axis == 0 else s["V"][:, order]
                    s["Q" + side], _ = torch.linalg.qr(s[side] @ Q[:, order])
        s["Mt"] = s["QL"].T @ M @ s["QR"]

    def step(self, grads):
        b1, b2 = self.b1, self.b2
        for p, grad, wd, s in zip(self.params, grads, self.wds, self.s):
            G = grad.reshape(s["Mt"].shape)
            if not s["ready"]:
                self._precondition(s, G)
                continue
            s["t"] += 1
            t = s["t"]
            Gt = s["QL"].T @ G @ s["QR"]
            s["Mt"] = b1 * s["Mt"] + (1 - b1) * Gt
            s["V"] = b2 * s["V"] + (1 - b2) * Gt**2
            size = self.lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
            p.sub_(size * (s["QL"] @ (s["Mt"] / (s["V"].sqrt() + self.eps)) @ s["QR"].T).reshape(p.shape))
            p.mul_(1 - self.lr * wd)
            self._precondition(s, G)


def test_original_step_equals_a_float64_transcription_of_the_original_code():
    """Every parameter decays (as with optim.decay=all), 1-D ones too, and the first step moves nothing."""
    settings = {**SETTINGS, "eps": 1e-3}  # a large eps: its placement must matter, and does (checked below)
    model = mlp()
    opt = SOAP(model.parameters(), original=True, **settings)
    ours = train(model, opt, 25)
    ref = reference_run(25, OriginalSOAP, settings, decay_all=True)
    assert all(torch.equal(a, b) for a, b in zip(ours[0], mlp().parameters()))  # step 1 only preconditions
    for k, (a, b) in enumerate(zip(ours, ref)):
        for pa, pb in zip(a, b):
            assert (pa - pb).abs().max() < 1e-10, f"step {k + 1}"
    assert opt.state[model[0].weight]["step"] == 25  # refreshed at Adam steps 10 and 20 (calls 11, 21)
    twin = mlp()
    default = train(twin, SOAP(twin.parameters(), **settings), 25)
    assert max((a - b).abs().max() for a, b in zip(default[-1], ours[-1])) > 1e-3  # the switch changes the run


def test_without_preconditioners_it_is_torch_adamw():
    settings = {**SETTINGS, "max_precond_dim": 0}
    model, twin = mlp(), mlp()
    ours = train(model, SOAP(groups(model), **settings), 5)
    kw = {k: v for k, v in settings.items() if k in ("lr", "betas", "eps", "weight_decay")}
    adamw = train(twin, torch.optim.AdamW(groups(twin), foreach=True, **kw), 5)
    for a, b in zip(ours, adamw):
        for pa, pb in zip(a, b):
            assert (pa - pb).abs().max() < 1e-14


def test_resume_through_torch_save_is_exact():
    model = mlp()
    opt = SOAP(groups(model), **SETTINGS)
    train(model, opt, 7)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    straight = train(model, opt, 8, start=7)  # crosses the refresh at step 10

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = mlp()
    resumed.load_state_dict(saved["model"])
    opt2 = SOAP(groups(resumed), **SETTINGS)
    opt2.load_state_dict(saved["optim"])
    again = train(resumed, opt2, 8, start=7)
    for a, b in zip(straight[-1], again[-1]):
        assert torch.equal(a, b)


def test_group_lr_scales_the_step():
    moves = []
    for scale in (1.0, 0.5):
        model = mlp()
        opt = SOAP(groups(model), **{**SETTINGS, "weight_decay": 0.0})
        for g in opt.param_groups:
            g["lr"] = SETTINGS["lr"] * scale
        before = [p.detach().clone() for p in model.parameters()]
        train(model, opt, 1)
        moves.append(torch.cat([(p - b).reshape(-1) for p, b in zip(model.parameters(), before)]))
    assert torch.allclose(moves[1], 0.5 * moves[0], rtol=1e-12, atol=0)


def test_balance_gives_the_costliest_jobs_first_to_the_least_loaded_rank():
    assert balance([1, 8, 8, 27, 1], 2) == [1, 1, 1, 0, 1]  # 27 -> 0; then rank 1 stays lighter: 8, 16, 17, 18
    assert balance([4, 3, 3, 2], 2) == [0, 1, 1, 0]  # 4 -> 0, 3 -> 1, 3 -> 1 (3 < 4), 2 -> 0 (4 < 6)
    assert balance([5, 5, 5], 1) == [0, 0, 0] and balance([], 4) == []


def test_a_refresh_spread_over_two_ranks_equals_one_process_and_is_shared(tmp_path):
    """Each rank computes its share of the eigenbases; after the broadcasts both hold exactly the
    parameters of one process computing everything, and of ranks that each computed everything."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd += [str(SPREAD_DRIVER), str(tmp_path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks: a thread count can change a kernel's rounding
    try:
        alone, calls = run_spread_driver(spread=True)
    finally:
        torch.set_num_threads(threads)
    for rank in ranks:
        for key in ("spread", "every"):
            assert all(torch.equal(a, b) for a, b in zip(rank[key], alone)), key
        assert rank["every_calls"] == calls
    shares = [rank["spread_calls"] for rank in ranks]
    assert sum(shares) == calls and min(shares) > 0, shares

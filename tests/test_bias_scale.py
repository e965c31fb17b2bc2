"""Biases sized to the model (``symmetry.scale = "width"``) and the paper configs' bias settings.

The width setting multiplies every bias mean and std by the model's query/value spread at init over
GPT-2 124M's. Here that spread is measured on freshly initialised models (LayerNorm'd random inputs
through the real attention projections), not taken from the formula the code uses.
"""

import math

import pytest
import torch

from configs import CONFIG_DIR, SymmetryConfig, UserError, load_config
from model import GPT, BiasDraws, GPTConfig, draw_biases
from model.gpt import REFERENCE_WIDTH, init_projection_spread
from model.symmetry import reference_biases

TOKENS = 4096  # random input vectors per measurement
MICRO_BATCHES = (0, 7, 123_456)


def gpt_config(width: int, scale: str, mode: str = "bqbv", **sym) -> GPTConfig:
    heads = max(1, width // 64)  # head_dim 64 as in GPT-2, so per-coordinate stds line up
    symmetry = SymmetryConfig(mode=mode, scale=scale, **sym)
    return GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=heads, n_embd=width, symmetry=symmetry)


@torch.no_grad()
def measured_spread(width: int, seed: int) -> dict[str, float]:
    """The std of the query and value coordinates of a freshly initialised model's first block, fed
    LayerNorm'd standard-normal vectors (every coordinate of every token pooled)."""
    torch.manual_seed(seed)
    block = GPT(gpt_config(width, "absolute")).transformer.h[0]
    x = block.ln_1(torch.randn(TOKENS, width, generator=torch.Generator().manual_seed(seed + 1)))
    q, _, v = block.attn.c_attn(x).split(width, dim=1)
    return {"q": q.pow(2).mean().sqrt().item(), "v": v.pow(2).mean().sqrt().item()}


def relative_error(width: int) -> float:
    """The standard deviation of a measured spread over its true value, over the draw of the weights.

    The pooled mean square is m = (1/C) Σ_i w_iᵀ S w_i over the C rows w_i ~ N(0, σ² I), with
    S = XᵀX / T for the T LayerNorm'd inputs (trace C). So E m = σ² C and Var m = 2 σ⁴ tr(S²) / C,
    with tr(S²) ≈ C (1 + C / T) for nearly isotropic inputs: m has relative std √(2 (1 + C/T)) / C, and
    its square root half of that."""
    return math.sqrt((1 + width / TOKENS) / 2) / width


def bias_over_spread(width: int, scale: str, seed: int) -> dict[str, torch.Tensor]:
    """Each bias's per-coordinate mean and std over the measured spread of the coordinates it joins."""
    spec = GPT(gpt_config(width, scale)).bias_spec
    spread = measured_spread(width, seed)
    out = {}
    for name in ("q", "v"):
        out[f"{name} mean"] = torch.tensor(spec.mean(name)) / spread[name]
        out[f"{name} std"] = spec.std(name) / spread[name]
    return out


def test_width_768_changes_nothing():
    absolute, width = gpt_config(768, "absolute").bias_spec(), gpt_config(768, "width").bias_spec()
    assert width.scale == 1.0
    for seed in (0, 42):
        for m in MICRO_BATCHES:
            a, b = draw_biases(absolute, seed, m), draw_biases(width, seed, m)
            assert a.keys() == b.keys() == {"q", "v"}
            assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    chunked = BiasDraws(width, seed=3, device="cpu")(5)
    assert all(torch.equal(chunked[k], draw_biases(absolute, 3, 5)[k]) for k in chunked)


@pytest.mark.parametrize("width", [64, 128, 256])
def test_bias_over_the_spread_at_init_is_the_124m_models_at_any_width(width):
    """At width 768 the ratio is the paper's; at other widths the width setting must give the same
    ratio within the sampling error of the two measured spreads, and the absolute setting must not."""
    tol = 5 * math.hypot(relative_error(width), relative_error(REFERENCE_WIDTH))
    reference = bias_over_spread(REFERENCE_WIDTH, "absolute", seed=0)
    scaled, absolute = bias_over_spread(width, "width", seed=1), bias_over_spread(width, "absolute", seed=1)
    for key, ratio in reference.items():
        assert (scaled[key] / ratio - 1).abs().max().item() < tol, key
        assert (absolute[key] / ratio - 1).abs().min().item() > 10 * tol, key  # a narrow model: larger biases
    # the measured spread is the derived one, 0.02·√width (LayerNorm'd inputs, N(0, 0.02²) weights)
    for name, spread in measured_spread(width, seed=2).items():
        assert abs(spread / init_projection_spread(width) - 1) < 5 * relative_error(width), name


def test_sized_draws_are_the_absolute_draws_times_the_width_ratio():
    """Same z per (seed, micro-batch, layer, coordinate): sizing only rescales each value, and the
    vectorised draw still equals the scalar reference bit for bit."""
    absolute, sized = gpt_config(128, "absolute").bias_spec(), gpt_config(128, "width").bias_spec()
    assert sized.scale == pytest.approx(math.sqrt(128 / 768), rel=1e-15)
    for m in MICRO_BATCHES:
        a, b = draw_biases(absolute, 9, m), draw_biases(sized, 9, m)
        for k in a:
            torch.testing.assert_close(b[k], a[k] * sized.scale, rtol=1e-6, atol=0)
        slow = reference_biases(sized, 9, m)
        assert all(torch.equal(b[k], slow[k]) for k in b)


def test_the_evaluation_means_are_sized_too():
    model = GPT(gpt_config(256, "width", k_bias=True))
    ratio = math.sqrt(256 / 768)
    for name, mean in model.mean_biases().items():
        expected = {"q": 0.5, "v": 0.5, "k": 0.5}[name] * ratio
        assert torch.allclose(mean, torch.full_like(mean, expected), rtol=1e-6, atol=0), name


def test_a_wrong_scale_is_one_line_naming_the_choices():
    with pytest.raises(UserError, match=r"symmetry.scale 'wide'; use one of: absolute, width"):
        load_config(CONFIG_DIR / "quickstart.toml", ["--symmetry.scale=wide"])


def test_paper_configs_keep_absolute_biases_and_the_published_bv_mean():
    for name in ("prelu", "gelu", "prelu-sgdm"):
        s = load_config(CONFIG_DIR / "paper" / f"{name}.toml").symmetry
        assert s.scale == "absolute" and s.v_mean == 0.0, name
    half = load_config(CONFIG_DIR / "paper" / "prelu.toml", ["--symmetry.v_mean=0.5"])
    assert half.symmetry.v_mean == 0.5  # the reference code's default stays one override away


def test_the_published_sgdm_config_starts_from_a_random_velocity_and_validates_every_500():
    cfg = load_config(CONFIG_DIR / "paper" / "prelu-sgdm.toml")
    prelu = load_config(CONFIG_DIR / "paper" / "prelu.toml")
    assert cfg.optim.name == "sgdm" and cfg.eval.interval == 500 and prelu.eval.interval == 1000
    assert cfg.optim.sections["sgdm"]["initial_velocity_std"] == 0.1
    assert prelu.optim.sections["sgdm"].get("initial_velocity_std", 0.0) == 0.0
    assert (cfg.model, cfg.symmetry, cfg.train) == (prelu.model, prelu.symmetry, prelu.train)

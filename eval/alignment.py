"""Which tokens' keys point along the query-bias direction bQ, per layer and head.

    python -m eval.alignment RUN_DIR --out DIR [--positions 8] [--k 100] [--direction bq|draw|random]

The query bias adds b to every query, so a key k gains b·k in every attention score: heads can use
the fixed direction to promote (or suppress) whole token classes. This tool measures that, in two ways:
ours (below) and the paper's, side by side.

Definitions:
  direction   per layer and head, normalised: ``bq`` the mean bQ that the run's [symmetry] settings
              draw around (the evaluation bias; for a symmetric run, the one its biased twin would
              get); ``draw`` one bQ drawn from that distribution per layer (seeded by --seed), the
              paper's null baseline on a symmetric run; ``random`` a seeded isotropic unit vector
              per layer and head, our null baseline. Default: bq, or random for a symmetric run.
  key vector  of token t at position p in layer l: LayerNorm_1^l(wte[t] + wpe[p]) W_k^l + b_k^l
              (+ the mean key bias if the model has one), split per head. At layer 0 this is the
              key the model computes; deeper layers apply their ln_1 and W_k to the same embedding
              sum, i.e. the direct path from the embedding, skipping what earlier blocks add.
              Cheap and well defined for every token; not the key of any particular context.
  cosine      cos(key_h(t, p), direction_h); a token's score is its mean over the positions.
  enrichment  log2 of (share of class c among the top K tokens) / (share of c in the vocabulary),
              with 0.5 pseudo-counts on both so that an absent class gives a finite value.
Token classes come from the decoded token text (digits, punctuation, capitalised, lowercase words,
function words, whitespace, leading space, non-ASCII) and from frequency bands over the first
``--freq_tokens`` tokens of the training split (top 1% of seen ids, 1-10%, 10-50%, bottom 50%, unseen).

The paper's statistic ("paper" in alignment.json): cos(wte[t]·W_kᵀ, direction) per head, the raw
token embedding through the key projection, without LayerNorm, position or key bias; and its
positional-only map, cos(wpe[p]·W_kᵀ, direction) for every position p. Where the two differ is the
LayerNorm (it centres and rescales the embedding), the learned key bias b_k (one vector added to
every key, which can carry most of a key's component along bQ) and the position; per head the
summary gives the Spearman correlation of the two token rankings.

Writes DIR/alignment.json (summary), DIR/cosines.npy (layer, head, token) mean cosines for the full
ranking, DIR/heatmap_layer{l}.png (per head: class x position mean cosine), DIR/enrichment.png, and
the paper's: DIR/paper_cosines.npy (layer, head, token), DIR/positional.npy (layer, head, position),
DIR/positional_heatmap.png (layer x position, mean over heads) and DIR/positional_layers.png.
"""

from __future__ import annotations

import dataclasses
import json
import string
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from configs import ArgumentParser, UserError, command, resolve_device
from data.shards import find_shards, open_shard
from eval.output import check_folder_target, staged_folder
from eval.run import load_run, run_dataset
from model.symmetry import BiasSpec, draw_biases
from progress import progress_bar

FUNCTION_WORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been it its this that "
    "these those he she they we you i his her their our not no so than then there which who what".split()
)
FREQ_BANDS = ("freq_top1pct", "freq_1_10pct", "freq_10_50pct", "freq_bottom50pct", "freq_unseen")


DIRECTIONS = ("bq", "draw", "random")


def query_directions(model: Any, direction: str = "bq", seed: int = 0) -> torch.Tensor:
    """Unit vectors (n_layer, n_head, head_dim): the mean bQ, one bQ draw, or seeded isotropic ones."""
    cfg = model.config
    shape = (cfg.n_layer, cfg.n_head, cfg.head_dim)
    # the query bias this model's [symmetry] settings describe, whatever its mode
    spec = BiasSpec(dataclasses.replace(cfg.symmetry, mode="bq", learned=False), cfg.n_layer, cfg.n_head, cfg.head_dim)
    if direction == "bq":  # a learned query bias: the one the run trained, else the draws' mean
        learned = model.mean_biases().get("q") if cfg.symmetry.learned else None
        d = (spec.means()["q"] if learned is None else learned.detach()).float().expand(shape)
    elif direction == "draw":
        d = draw_biases(spec, seed, 0)["q"].float().expand(shape)
    elif direction == "random":
        d = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    else:
        raise UserError(f"unknown --direction '{direction}'; use one of: {', '.join(DIRECTIONS)}")
    return d / d.norm(dim=-1, keepdim=True)


@torch.no_grad()
def key_cosines(model: Any, directions: torch.Tensor, positions: list[int], progress: bool = False) -> torch.Tensor:
    """(n_layer, n_head, vocab, len(positions)): cosine of each token's key with each head's direction."""
    cfg = model.config
    C, H, V = cfg.n_embd, cfg.n_head, cfg.vocab_size
    wte = model.transformer.wte.weight[:V].float()
    wpe = model.transformer.wpe.weight.float()
    key_bias = model.mean_biases().get("k")
    dirs = directions.to(wte.device)
    out = torch.empty(cfg.n_layer, H, V, len(positions))
    for j, p in enumerate(progress_bar(positions, desc="positions", disable=not progress, file=sys.stderr)):
        x = wte + wpe[p]
        for layer, block in enumerate(model.transformer.h):
            w = block.attn.c_attn.weight[C : 2 * C].float()
            b = None if block.attn.c_attn.bias is None else block.attn.c_attn.bias[C : 2 * C].float()
            ln = block.ln_1
            h = F.layer_norm(x, (C,), ln.weight.float(), None if ln.bias is None else ln.bias.float(), ln.eps)
            k = F.linear(h, w, b).view(V, H, C // H)
            if key_bias is not None:
                k = k + key_bias[layer].float()
            cos = (k * dirs[layer]).sum(-1) / k.norm(dim=-1).clamp_min(1e-12)
            out[layer, :, :, j] = cos.t().cpu()
    return out


@torch.no_grad()
def projection_cosines(model: Any, directions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(n_layer, n_head, len(rows)): cos(row·W_kᵀ, direction) per head, with no LayerNorm and no key
    bias: the paper's statistic, for token embeddings (rows = wte) or position embeddings (rows = wpe)."""
    cfg = model.config
    C, H = cfg.n_embd, cfg.n_head
    rows = rows.float()
    dirs = directions.to(rows.device)
    out = torch.empty(cfg.n_layer, H, len(rows))
    for layer, block in enumerate(model.transformer.h):
        k = F.linear(rows, block.attn.c_attn.weight[C : 2 * C].float()).view(len(rows), H, C // H)
        cos = (k * dirs[layer]).sum(-1) / k.norm(dim=-1).clamp_min(1e-12)
        out[layer] = cos.t().cpu()
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two score vectors (continuous scores: ties have probability zero)."""
    ra, rb = (np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def token_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    return [tokenizer.decode([i]) if i != tokenizer.eot else "<|endoftext|>" for i in range(vocab_size)]


def text_classes(texts: list[str]) -> dict[str, np.ndarray]:
    """Boolean masks over the vocabulary, one per class defined by the token's text."""

    def mask(pred) -> np.ndarray:
        return np.array([bool(pred(t)) for t in texts])

    def core(t: str) -> str:
        return t.strip()

    return {
        "digits": mask(lambda t: core(t).isdigit() and core(t).isascii()),
        "punctuation": mask(lambda t: core(t) != "" and all(ch in string.punctuation for ch in core(t))),
        "capitalised": mask(lambda t: core(t)[:1].isupper()),
        "lowercase_word": mask(lambda t: core(t).isalpha() and core(t).islower()),
        "function_word": mask(lambda t: core(t).lower() in FUNCTION_WORDS),
        "whitespace": mask(lambda t: t != "" and t.isspace()),
        "leading_space": mask(lambda t: len(t) > 1 and t[0] == " " and not t.isspace()),
        "non_ascii": mask(lambda t: not t.isascii() or "\ufffd" in t),
    }


def frequency_classes(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Bands by frequency rank among the ids that occur: top 1%, 1-10%, 10-50%, bottom 50%; and unseen."""
    seen = counts > 0
    order = np.argsort(-counts, kind="stable")[: int(seen.sum())]
    rank = np.full(len(counts), -1)
    rank[order] = np.arange(len(order))
    n = max(1, len(order))
    edges = [0, 0.01, 0.10, 0.50, 1.0 + 1e-9]
    out = {}
    for name, lo, hi in zip(FREQ_BANDS, edges[:-1], edges[1:]):
        out[name] = seen & (rank >= lo * n) & (rank < hi * n)
    out["freq_unseen"] = ~seen
    return out


def train_token_counts(
    run: Any, vocab_size: int, max_tokens: int, data: str | None = None
) -> tuple[np.ndarray | None, str]:
    """Token counts over the first ``max_tokens`` of the training split of the data the run trained on
    (its recorded folder, checked by fingerprint, or ``data``); None and the reason when there is none."""
    try:
        files = find_shards(run_dataset(run, data).folder, "train")
    except UserError as e:
        return None, str(e)
    counts = np.zeros(vocab_size, dtype=np.int64)
    left = max_tokens
    for f in files:
        tokens = np.asarray(open_shard(f)[:left])
        counts += np.bincount(tokens, minlength=vocab_size)[:vocab_size]
        left -= len(tokens)
        if left <= 0:
            break
    return counts, ""


def enrichment(ranked: np.ndarray, classes: dict[str, np.ndarray], k: int) -> dict[str, float]:
    """log2 fold enrichment of each class among ``ranked[:k]`` against the whole vocabulary."""
    V = len(ranked)
    top = ranked[:k]
    return {
        name: float(np.log2(((m[top].sum() + 0.5) / (k + 1)) / ((m.sum() + 0.5) / (V + 1))))
        for name, m in classes.items()
    }


def analyse(
    model: Any,
    tokenizer: Any,
    positions: list[int],
    k: int,
    direction: str = "bq",
    counts: np.ndarray | None = None,
    seed: int = 0,
    show: int = 20,
    progress: bool = False,
) -> tuple[dict[str, Any], torch.Tensor, dict[str, np.ndarray]]:
    """The JSON summary, the (layer, head, token, position) cosines and the token classes."""
    cfg = model.config
    V = cfg.vocab_size
    bad = [p for p in positions if not 0 <= p < cfg.block_size]
    if bad:
        raise UserError(f"positions {bad} are outside 0..{cfg.block_size - 1}; pass smaller ones")
    if not 1 <= k <= V:
        raise UserError(f"--k must be in 1..{V}, got {k}")
    dirs = query_directions(model, direction, seed)
    cos = key_cosines(model, dirs, positions, progress)
    paper = projection_cosines(model, dirs, model.transformer.wte.weight[:V]).numpy()
    positional = projection_cosines(model, dirs, model.transformer.wpe.weight).numpy()
    texts = token_texts(tokenizer, V)
    classes = text_classes(texts)
    if counts is not None:
        classes.update(frequency_classes(counts))
    classes = {name: m for name, m in classes.items() if m.any()}  # an empty class has no enrichment
    score = cos.mean(dim=-1).numpy()  # (layer, head, token)

    def head_summary(s: np.ndarray, h: int) -> dict[str, Any]:
        ranked = np.argsort(-s, kind="stable")

        def listing(ids: np.ndarray) -> list[dict]:
            return [{"id": int(i), "token": texts[i], "cos": float(s[i])} for i in ids]

        return {
            "head": h,
            "mean_cos": float(s.mean()),
            "top": listing(ranked[:show]),
            "bottom": listing(ranked[::-1][:show]),
            "enrichment_top": enrichment(ranked, classes, k),
            "enrichment_bottom": enrichment(ranked[::-1], classes, k),
        }

    layers, paper_layers = [], []
    for layer in range(cfg.n_layer):
        heads = [head_summary(score[layer, h], h) for h in range(cfg.n_head)]
        layers.append({"layer": layer, "direction": dirs[layer].tolist(), "heads": heads})
        theirs = []
        for h in range(cfg.n_head):
            entry = head_summary(paper[layer, h], h)
            entry["spearman_with_ours"] = spearman(paper[layer, h], score[layer, h])
            entry["positional_mean_cos"] = float(positional[layer, h].mean())
            theirs.append(entry)
        paper_layers.append({"layer": layer, "heads": theirs})
    summary = {
        "direction": direction,
        "positions": positions,
        "k": k,
        "classes": {name: int(m.sum()) for name, m in classes.items()},
        "layers": layers,
        "paper": {"statistic": "cos(wte W_k^T, direction), no LayerNorm, position or key bias", "layers": paper_layers},
    }
    return summary, cos, classes, paper, positional


def plot(out: Path, summary: dict[str, Any], cos: torch.Tensor, classes: dict[str, np.ndarray]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(classes)
    L, H = cos.shape[0], cos.shape[1]
    positions = summary["positions"]
    written = []
    for layer in range(L):
        fig, axes = plt.subplots(1, H, figsize=(2.2 * H + 2, 0.35 * len(names) + 1.8), squeeze=False, sharey=True)
        grid = np.stack([cos[layer][:, m].mean(dim=1).numpy() for m in (classes[n] for n in names)], axis=1)
        lim = float(np.abs(grid).max()) or 1.0
        for h in range(H):
            ax = axes[0, h]
            im = ax.imshow(grid[h], aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"head {h}", fontsize=8)
            ax.set_xticks(range(len(positions)), [str(p) for p in positions], fontsize=6, rotation=90)
            ax.set_xlabel("position", fontsize=7)
        axes[0, 0].set_yticks(range(len(names)), names, fontsize=7)
        fig.colorbar(im, ax=axes[0, :].tolist(), shrink=0.8, label=f"mean cos(key, {summary['direction']})")
        fig.suptitle(f"layer {layer}: key alignment with the {summary['direction']} direction by token class")
        path = out / f"heatmap_layer{layer}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    enr = np.array(
        [[head["enrichment_top"][n] for layer in summary["layers"] for head in layer["heads"]] for n in names]
    )
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * L * H + 2), 0.35 * len(names) + 1.5))
    lim = float(np.abs(enr).max()) or 1.0
    im = ax.imshow(enr, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xticks(range(L * H), [f"{layer}.{h}" for layer in range(L) for h in range(H)], fontsize=6, rotation=90)
    ax.set_xlabel("layer.head")
    fig.colorbar(im, ax=ax, label=f"log2 enrichment among the top {summary['k']}")
    ax.set_title("token classes among the keys most aligned with the direction")
    path = out / "enrichment.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return written + [path]


def plot_positional(out: Path, direction: str, positional: np.ndarray) -> list[Path]:
    """The paper's positional-only alignment: a layer x position heatmap (mean over heads) and, for
    the first and the last layer, every head's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = positional.shape[0]
    fig, ax = plt.subplots(figsize=(10, 0.4 * L + 2))
    mean = positional.mean(axis=1)
    lim = float(np.abs(mean).max()) or 1.0
    im = ax.imshow(mean, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="none")
    ax.set_xlabel("position")
    ax.set_ylabel("layer")
    ax.set_yticks(range(L))
    fig.colorbar(im, ax=ax, label=f"cos(wpe W_k, {direction}), mean over heads")
    ax.set_title("positional alignment (the paper's statistic: no LayerNorm, no key bias)")
    heatmap = out / "positional_heatmap.png"
    fig.savefig(heatmap, dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, layer in zip(axes, (0, L - 1)):
        ax.plot(positional[layer].T, lw=0.8)
        ax.set_title(f"layer {layer}: every head")
        ax.set_xlabel("position")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"cos(wpe W_k, {direction})")
    layers = out / "positional_layers.png"
    fig.savefig(layers, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [heatmap, layers]


def spaced_positions(block_size: int, n: int) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(0, block_size - 1, max(1, n))})


def format_summary(summary: dict[str, Any], n_tokens: int = 5) -> str:
    """Per head: the most aligned tokens and the most enriched class among the top K, ours and the paper's."""
    lines = [f"direction: {summary['direction']}, positions {summary['positions']}, top/bottom K = {summary['k']}"]
    for ours, theirs in zip(summary["layers"], summary["paper"]["layers"]):
        for head, paper in zip(ours["heads"], theirs["heads"]):
            top = " ".join(repr(t["token"]) for t in head["top"][:n_tokens])
            cls, val = max(head["enrichment_top"].items(), key=lambda kv: kv[1])
            lines.append(
                f"L{ours['layer']}H{head['head']}  mean cos {head['mean_cos']:+.3f}  "
                f"top: {top}  most enriched: {cls} ({val:+.2f})"
            )
            top = " ".join(repr(t["token"]) for t in paper["top"][:n_tokens])
            lines.append(
                f"      paper's: mean cos {paper['mean_cos']:+.3f}  top: {top}  "
                f"rank agreement with ours (Spearman) {paper['spearman_with_ours']:+.2f}"
            )
    return "\n".join(lines)


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Alignment of token keys with the query-bias direction, per head.")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="folder for alignment.json, cosines.npy and the PNGs")
    p.add_argument("--positions", type=int, default=8, help="positions spaced evenly over the context (incl. 0)")
    p.add_argument("--k", type=int, default=100, help="top/bottom K tokens for the enrichment (capped at vocab/10)")
    p.add_argument("--direction", default=None, help="bq (default with a query bias), draw (paper's null), random")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw or of the random direction")
    p.add_argument("--freq_tokens", type=int, default=10_000_000, help="training tokens counted for frequency bands")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file (default: the run's latest)")
    p.add_argument("--data", default=None, help="count token frequencies in this dataset folder instead of the run's")
    p.add_device()
    args = p.parse_args(argv)
    if args.freq_tokens < 1:
        raise UserError(f"--freq_tokens must be >= 1 (the training tokens to count), got {args.freq_tokens}")
    out = Path(args.out)
    check_folder_target(out, "--out")
    args.device = resolve_device(args.device)
    run = load_run(args.run_dir, args.device, args.checkpoint)
    model = run.model
    if model.config.position != "learned":
        raise UserError(
            f"'{args.run_dir}' has rotary positions and the alignment analysis reads a position embedding; "
            "analyse a run with model.position=learned"
        )
    direction = args.direction or ("bq" if "q" in model.mean_biases() else "random")
    V = model.config.vocab_size
    k = min(args.k, max(1, V // 10))
    counts, why = train_token_counts(run, V, args.freq_tokens, args.data)
    positions = spaced_positions(model.config.block_size, args.positions)
    summary, cos, classes, paper, positional = analyse(
        model, run.tokenizer, positions, k, direction, counts, args.seed, progress=True
    )
    summary = {"run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), **summary}
    if counts is None:
        summary["note"] = f"no frequency bands: {why}"
    with staged_folder(out, "--out") as stage:
        (stage / "alignment.json").write_text(json.dumps(summary, indent=2))
        np.save(stage / "cosines.npy", cos.mean(dim=-1).numpy())
        np.save(stage / "paper_cosines.npy", paper)
        np.save(stage / "positional.npy", positional)
        plot(stage, summary, cos, classes)
        plot_positional(stage, direction, positional)
    print(format_summary(summary))
    print(f"wrote {out}/alignment.json, cosines.npy, heatmap_layer*.png, enrichment.png, and the paper's")
    print("statistic: paper_cosines.npy, positional.npy, positional_heatmap.png, positional_layers.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The logic-puzzle suite: eight categories of templated items, scored by next-token statistics.

    python -m eval.logic RUN_DIR [--n 100] [--out FILE.json] [--no_bias]
    python -m eval.logic RUN_DIR --items FILE.jsonl      # any item set, e.g. the paper's own

Answer categories (a prompt and the answer that continues it):
  numeric      arithmetic, geometric and Fibonacci-like sequences: "3, 7, 11, 15," -> " 19"
  alphabetic   letter sequences with a fixed step that wrap from z to a: "w, y, a, c," -> " e"
  near         retrieval of a fact stated just before the query
  far          retrieval of a fact stated first, followed by distractors
  inference    syllogisms ("All A are B. All B are C. So all A are" -> " C") and transitive orders
  copying      a word sequence repeated: the last word of the copy
Pair categories (two sentences, scored by the ratio of their per-token perplexities):
  negation     ppl(negated sentence) / ppl(plain sentence)
  syntax       ppl(sentence without punctuation) / ppl(the same sentence with punctuation)

Items come from seeded templates (``generate_items``): deterministic per (seed, category), duplicate-
free, answers correct by construction. Every sequence starts with the end-of-text token as context.
A sequence longer than the model's context is cut from the left (counted per category as
``truncated``); only in a context shorter than the scored text itself does scoring lose tokens.

Scores of an answer item, with a multi-token answer scored under teacher forcing:
  logprob  the answer's full log-probability, sum over its tokens of log p(token | prompt, earlier tokens)
  rank     the worst (largest) rank of any answer token among the real vocabulary (1 = most likely)
  top1     rank == 1, i.e. greedy decoding reproduces the whole answer
  top5     rank <= 5, every answer token within the five most likely
Scores of a pair item: log_ratio = mean NLL(contrast) - mean NLL(reference) per token, ppl_ratio =
exp(mean log_ratio) (a geometric mean of the per-item ratios), prefer = share of items with ratio > 1.
95% intervals: Wilson for proportions (top1, top5, prefer), a percentile bootstrap with a fixed seed
(2000 resamples) for means (rank, logprob, log_ratio; ppl_ratio's interval is exp of log_ratio's).

The paper's scores, next to ours under "paper" in each category: every sequence without the
end-of-text prefix, and an answer item scored by its first token alone:
  first_token_loss  -log p(first answer token | prompt); its mean over every answer item of the
                    suite is the paper's "logic loss" (logic_loss in the summary)
  top1, top5        the first answer token is the most likely, or among the five most likely
  in_top10          the share whose first answer token is among the ten most likely, and
  mean_rank_top10   the mean rank of those (the paper ranks only within its top ten)
  completion_loss   the mean per-token loss of the whole answer
  ppl_ratio         for pairs, the arithmetic mean over items of ppl(contrast) / ppl(reference)

An item file (``--items``) holds one JSON object per line: {"category": ..., "prompt": ..., "answer":
...} for an answer item or {"category": ..., "prompt": ..., "contrast": ...} for a pair item (the
prompt is then the reference sentence), with an optional "kind"; any category names, each category
of one sort. See docs/evaluation.md.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from configs import ArgumentParser, UserError, command, require, resolve_device
from eval.output import check_file_target, write_file
from eval.run import load_run
from progress import progress_bar

ANSWER_CATEGORIES = ("numeric", "alphabetic", "near", "far", "inference", "copying")
PAIR_CATEGORIES = ("negation", "syntax")
CATEGORIES = ANSWER_CATEGORIES + PAIR_CATEGORIES
SCORINGS = ("ours", "paper")  # ours: an end-of-text prefix, whole answers; the paper's: neither
BOOTSTRAP_RESAMPLES = 2000
Z95 = 1.959963984540054


ITEM_KEYS = ("category", "prompt", "answer", "contrast", "kind")


@dataclass(frozen=True)
class Item:
    category: str
    kind: str  # the template within the category, e.g. "geometric"
    prompt: str  # answer items: the context; pair items: the reference sentence
    answer: str = ""  # answer items: the continuation that is scored
    contrast: str = ""  # pair items: the sentence compared against the reference


# --------------------------------------------------------------------------------------------
# Item templates. Each takes a random.Random and the item's index (to cycle through kinds).
# --------------------------------------------------------------------------------------------

NAMES = "Tom Ann Bob Eve Sam Max Kim Joe Amy Ben Dan Liz Ron Zoe Ian Meg Leo Ada Guy Sue".split()
WORDS = (
    "apple river stone cloud table chair garden window bread paper water light house music "
    "green money paint glass night summer letter forest horse candle bottle pencil mirror ocean "
    "silver button rabbit planet kettle ladder basket violin tiger orange"
).split()
NONCE = "wugs feps daxes blickets zorps kivs lums nobs perts gazzers tufas mibs snorps quels".split()
COMPARATIVES = "taller older faster stronger richer louder".split()
NOUNS = "cat dog door car sky road cup book lamp tree shirt coat wall box bag room bed field lake song".split()
ADJECTIVES = "red big old open cold warm full empty clean quiet dark wet dry new heavy soft".split()
VERBS = "likes sees wants finds keeps draws sells buys".split()
ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def _numeric(rng: random.Random, i: int) -> Item:
    kind = ("arithmetic", "geometric", "fibonacci")[i % 3]
    if kind == "arithmetic":
        a, d, shown = rng.randint(0, 60), rng.randint(1, 12), rng.randint(4, 5)
        seq = [a + d * k for k in range(shown + 1)]
    elif kind == "geometric":
        a, r, shown = rng.randint(1, 40), rng.randint(2, 4), rng.randint(4, 5)
        seq = [a * r**k for k in range(shown + 1)]
    else:
        seq, shown = [rng.randint(1, 12), rng.randint(1, 12)], rng.randint(5, 6)
        while len(seq) < shown + 1:
            seq.append(seq[-1] + seq[-2])
    return Item("numeric", kind, ", ".join(map(str, seq[:-1])) + ",", f" {seq[-1]}")


def _alphabetic(rng: random.Random, i: int) -> Item:
    step, shown = rng.randint(1, 4), rng.randint(3, 5)
    if i % 2 == 0:  # every other item crosses z -> a within the shown letters or at the answer
        start = rng.randint(26 - step * shown, 25)
        kind = "wrap"
    else:
        start = rng.randint(0, 25 - step * shown)
        kind = "plain"
    letters = [ALPHABET[(start + step * k) % 26] for k in range(shown + 1)]
    if rng.random() < 0.5:
        letters = [c.upper() for c in letters]
    return Item("alphabetic", kind, ", ".join(letters[:-1]) + ",", f" {letters[-1]}")


def _facts(rng: random.Random, n: int) -> list[tuple[str, int]]:
    return [(name, rng.randint(0, 9)) for name in rng.sample(NAMES, n)]


def _retrieval(rng: random.Random, category: str) -> Item:
    facts = _facts(rng, 6)
    name, value = facts[-1] if category == "near" else facts[0]
    context = " ".join(f"{n} has {v}." for n, v in facts)
    return Item(category, category, f"{context} {name} has", f" {value}")


def _inference(rng: random.Random, i: int) -> Item:
    if i % 2 == 0:
        a, b, c = rng.sample(NONCE, 3)
        premises = [f"All {a} are {b}.", f"All {b} are {c}."]
        rng.shuffle(premises)
        return Item("inference", "syllogism", f"{' '.join(premises)} So all {a} are", f" {c}")
    a, b, c = rng.sample(NAMES, 3)
    comp = rng.choice(COMPARATIVES)
    premises = [f"{a} is {comp} than {b}.", f"{b} is {comp} than {c}."]
    rng.shuffle(premises)
    return Item("inference", "transitive", f"{' '.join(premises)} So {a} is {comp} than", f" {c}")


def _copying(rng: random.Random, i: int) -> Item:
    words = rng.sample(sorted(set(WORDS)), rng.randint(4, 6))
    return Item("copying", "words", f"{' '.join(words)}. {' '.join(words[:-1])}", f" {words[-1]}")


def _negation(rng: random.Random, i: int) -> Item:
    noun, adj = rng.choice(NOUNS), rng.choice(ADJECTIVES)
    if i % 2 == 0:
        return Item("negation", "is", f"The {noun} is {adj}.", contrast=f"The {noun} is not {adj}.")
    name, verb, obj = rng.choice(NAMES), rng.choice(VERBS), rng.choice(NOUNS)
    plain = f"{name} {verb} the {obj}."
    negated = f"{name} does not {verb[:-1]} the {obj}."  # "likes" -> "does not like"
    return Item("negation", "does", plain, contrast=negated)


def _syntax(rng: random.Random, i: int) -> Item:
    a, b = rng.sample(NAMES, 2)
    v1, v2 = rng.choice(VERBS), rng.choice(VERBS)
    n1, n2 = rng.sample(NOUNS, 2)
    if i % 2 == 0:
        kind, text = "clauses", f"{a} {v1} the {n1}, {rng.choice(('and', 'but'))} {b} {v2} the {n2}."
    else:
        kind, text = "question", f"Does {a} see the {n1}? Yes, {b} {v2} the {n2}."
    stripped = "".join(ch for ch in text if ch not in ",.?")
    return Item("syntax", kind, text, contrast=stripped)


TEMPLATES: dict[str, Callable[[random.Random, int], Item]] = {
    "numeric": _numeric,
    "alphabetic": _alphabetic,
    "near": lambda rng, i: _retrieval(rng, "near"),
    "far": lambda rng, i: _retrieval(rng, "far"),
    "inference": _inference,
    "copying": _copying,
    "negation": _negation,
    "syntax": _syntax,
}


def generate_items(category: str, n: int, seed: int = 0) -> list[Item]:
    """``n`` distinct items of one category, the same for the same (category, n, seed)."""
    if category not in TEMPLATES:
        raise UserError(f"unknown logic category '{category}'; use one of: {', '.join(CATEGORIES)}")
    if n < 1:
        raise UserError(f"the logic suite needs at least one item per category, got n={n}; pass --n 1 or more")
    rng = random.Random(f"{seed}/{category}")  # str seeds hash with sha512: stable across processes
    items: list[Item] = []
    seen: set[Item] = set()
    misses = 0
    while misses < 5000:  # this many duplicates in a row: the template's space is (nearly) used up
        item = TEMPLATES[category](rng, len(items))
        if item in seen:
            misses += 1
            continue
        seen.add(item)
        items.append(item)
        misses = 0
        if len(items) == n:
            return items
    raise UserError(f"category '{category}' ran out of distinct items after {len(items)}; pass a smaller --n")


def suite_items(n: int, seed: int = 0) -> dict[str, list[Item]]:
    return {c: generate_items(c, n, seed) for c in CATEGORIES}


def read_items(path: str | Path) -> dict[str, list[Item]]:
    """The items of a JSON-lines file, by category in the order they first appear (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"items file '{path}' not found; pass a JSON-lines file of logic items")
    items: dict[str, list[Item]] = {}
    sort: dict[str, tuple[str, int]] = {}  # category -> (answer | pair, the line that set it)
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise UserError(f"{where}: not valid JSON ({e}); write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object like {{\"category\": ..., \"prompt\": ...}}")
        unknown = sorted(set(obj) - set(ITEM_KEYS))
        if unknown:
            raise UserError(f"{where}: unknown key '{unknown[0]}'; an item has the keys {', '.join(ITEM_KEYS)}")
        if ("answer" in obj) == ("contrast" in obj):
            raise UserError(f"{where}: give exactly one of \"answer\" (an answer item) or \"contrast\" (a pair item)")
        kind = "answer" if "answer" in obj else "pair"
        for key in ("category", "prompt", kind if kind == "answer" else "contrast"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise UserError(f"{where}: \"{key}\" must be a non-empty string")
        category = obj["category"]
        first = sort.setdefault(category, (kind, number))
        if first[0] != kind:
            raise UserError(
                f"{where}: category '{category}' holds {first[0]} items (line {first[1]}) and this is a {kind} item; "
                "give it its own category"
            )
        kind_name, answer, contrast = str(obj.get("kind", category)), obj.get("answer", ""), obj.get("contrast", "")
        items.setdefault(category, []).append(Item(category, kind_name, obj["prompt"], answer, contrast))
    if not items:
        raise UserError(f"items file '{path}' holds no items; write one JSON object per line")
    return items


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


@dataclass
class TokenScores:
    logprob: np.ndarray  # log p of each scored token given everything before it
    rank: np.ndarray  # 1 + the number of real-vocabulary tokens with a strictly higher logit


@torch.no_grad()
def score_tokens(
    model: nn.Module,
    sequences: list[list[int]],
    starts: list[int],
    vocab_size: int,
    block_size: int,
    device: torch.device | str = "cpu",
    biases: dict[str, torch.Tensor] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[TokenScores]:
    """Score tokens ``seq[start:]`` of every sequence given their prefix (``start`` >= 1).

    A sequence longer than ``block_size`` keeps its last ``block_size`` tokens (cut from the left);
    should the scored part itself not fit, only its last ``block_size - 1`` tokens are scored.
    """
    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]))  # similar lengths share a batch
    out: list[TokenScores | None] = [None] * len(sequences)
    starts_of_batches = range(0, len(order), batch_size)
    for b in progress_bar(starts_of_batches, desc="logic suite", unit="batch", disable=not progress, file=sys.stderr):
        chunk = order[b : b + batch_size]
        seqs, firsts = [], []
        for k in chunk:
            seq, start = sequences[k], starts[k]
            if not 1 <= start < len(seq):
                raise ValueError(f"start {start} leaves nothing to score in a sequence of {len(seq)} tokens")
            cut = max(0, len(seq) - block_size)
            seqs.append(seq[cut:])
            firsts.append(max(1, start - cut))
        T = max(len(s) for s in seqs)
        idx = torch.zeros(len(seqs), T, dtype=torch.long)
        for r, s in enumerate(seqs):
            idx[r, : len(s)] = torch.tensor(s)  # right padding: a causal model never looks ahead
        logits, _ = model(idx.to(device), biases=biases)
        for r, (k, s, first) in enumerate(zip(chunk, seqs, firsts)):
            pred = logits[r, first - 1 : len(s) - 1, :vocab_size].float()
            target = torch.tensor(s[first:], device=pred.device)
            picked = pred.gather(1, target[:, None])
            logp = picked[:, 0] - pred.logsumexp(dim=1)
            rank = 1 + (pred > picked).sum(dim=1)
            out[k] = TokenScores(logp.cpu().double().numpy(), rank.cpu().numpy())
    return out


def wilson(successes: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if successes in (0, n):  # the closed form's endpoints, exact rather than rounded
        bound = Z95**2 / (n + Z95**2)
        return (0.0, bound) if successes == 0 else (1 - bound, 1.0)
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean_ci(x: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean, reproducible through ``seed``."""
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(BOOTSTRAP_RESAMPLES, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def answer_scores(scores: list[TokenScores]) -> dict[str, Any]:
    rank = np.array([s.rank.max() for s in scores], dtype=np.float64)
    logprob = np.array([s.logprob.sum() for s in scores])
    n = len(scores)
    top1, top5 = float((rank == 1).sum()), float((rank <= 5).sum())
    return {
        "n": n,
        "top1": top1 / n,
        "top1_ci": wilson(top1, n),
        "top5": top5 / n,
        "top5_ci": wilson(top5, n),
        "mean_rank": float(rank.mean()),
        "mean_rank_ci": bootstrap_mean_ci(rank),
        "logprob": float(logprob.mean()),
        "logprob_ci": bootstrap_mean_ci(logprob),
    }


def paper_answer_scores(scores: list[TokenScores]) -> dict[str, Any]:
    """The paper's scores of answer items (no end-of-text prefix): the first answer token's."""
    loss = np.array([-s.logprob[0] for s in scores])
    rank = np.array([s.rank[0] for s in scores], dtype=np.float64)
    n = len(scores)
    top1, top5, top10 = (float((rank <= k).sum()) for k in (1, 5, 10))
    return {
        "n": n,
        "first_token_loss": float(loss.mean()),
        "first_token_loss_ci": bootstrap_mean_ci(loss),
        "top1": top1 / n,
        "top1_ci": wilson(top1, n),
        "top5": top5 / n,
        "top5_ci": wilson(top5, n),
        "in_top10": top10 / n,
        "mean_rank_top10": float(rank[rank <= 10].mean()) if top10 else None,
        "completion_loss": float(np.mean([-s.logprob.mean() for s in scores])),
    }


def paper_pair_scores(reference: list[TokenScores], contrast: list[TokenScores]) -> dict[str, Any]:
    """The paper's pair score: the arithmetic mean of the per-item perplexity ratios."""
    ratio = np.array([math.exp(r.logprob.mean() - c.logprob.mean()) for r, c in zip(reference, contrast)])
    return {"n": len(ratio), "ppl_ratio": float(ratio.mean()), "ppl_ratio_ci": bootstrap_mean_ci(ratio)}


def pair_scores(reference: list[TokenScores], contrast: list[TokenScores]) -> dict[str, Any]:
    log_ratio = np.array([-c.logprob.mean() + r.logprob.mean() for r, c in zip(reference, contrast)])
    n = len(log_ratio)
    lo, hi = bootstrap_mean_ci(log_ratio)
    prefer = float((log_ratio > 0).sum())
    return {
        "n": n,
        "ppl_ratio": math.exp(log_ratio.mean()),
        "ppl_ratio_ci": (math.exp(lo), math.exp(hi)),
        "log_ratio": float(log_ratio.mean()),
        "log_ratio_ci": (lo, hi),
        "prefer": prefer / n,
        "prefer_ci": wilson(prefer, n),
    }


def evaluate_items(
    model: nn.Module,
    tokenizer: Any,
    items: dict[str, list[Item]],
    device: torch.device | str = "cpu",
    biases: dict[str, torch.Tensor] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Scores per category for ``items`` (as from ``suite_items`` or ``read_items``), ours and, under
    "paper", the paper's (every sequence scored a second time, without the end-of-text prefix)."""
    cfg = model.config
    seqs, starts, where = [], [], []  # where: (scoring, category, "answer" | "reference" | "contrast")
    for scoring, prefix in zip(SCORINGS, ([tokenizer.eot], [])):
        for category, group in items.items():
            for item in group:
                texts = [("answer", item.prompt)] if item.answer else [("reference", item.prompt)]
                texts += [] if item.answer else [("contrast", item.contrast)]
                for role, text in texts:
                    ctx = prefix + tokenizer.encode(text)
                    seq = ctx + tokenizer.encode(item.answer) if item.answer else ctx
                    if len(seq) < 2 or not ctx:
                        raise UserError(
                            f"a {category} item is too short to score without an end-of-text prefix ({text!r}); "
                            "give it a longer prompt"
                        )
                    seqs.append(seq)
                    starts.append(len(ctx) if item.answer else 1)
                    where.append((scoring, category, role))
    was_training = model.training
    model.eval()
    try:
        scores = score_tokens(model, seqs, starts, cfg.vocab_size, cfg.block_size, device, biases, batch_size, progress)
    finally:
        model.train(was_training)
    by_role: dict[tuple[str, str, str], list[TokenScores]] = {}
    cut: dict[str, int] = {}
    for (scoring, category, role), s, seq in zip(where, scores, seqs):
        by_role.setdefault((scoring, category, role), []).append(s)
        if scoring == "ours":
            cut[category] = cut.get(category, 0) + (len(seq) > cfg.block_size)
    results = {}
    for category in items:
        if ("ours", category, "answer") in by_role:
            results[category] = answer_scores(by_role[("ours", category, "answer")])
            results[category]["paper"] = paper_answer_scores(by_role[("paper", category, "answer")])
        else:
            ours, paper = ([by_role[(how, category, r)] for r in ("reference", "contrast")] for how in SCORINGS)
            results[category] = pair_scores(*ours)
            results[category]["paper"] = paper_pair_scores(*paper)
        results[category]["truncated"] = cut[category]
    return results


def evaluate_suite(
    model: nn.Module,
    tokenizer: Any,
    n: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
    no_bias: bool = False,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """All eight categories with ``n`` items each; ``no_bias`` drops the mean biases."""
    biases = {} if no_bias else None
    return evaluate_items(model, tokenizer, suite_items(n, seed), device, biases, batch_size, progress)


def is_answer(result: dict[str, Any]) -> bool:
    return "top1" in result


def flat_summary(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """A flat dict for the training log: pooled over answer items our top-1/top-5 and the paper's logic
    loss (the mean first-token loss), then one number per category."""
    answer = [r for r in results.values() if is_answer(r)]
    total = sum(r["n"] for r in answer)
    out: dict[str, float] = {}
    if total:
        out["logic_top1"] = sum(r["top1"] * r["n"] for r in answer) / total
        out["logic_top5"] = sum(r["top5"] * r["n"] for r in answer) / total
        out["logic_loss"] = sum(r["paper"]["first_token_loss"] * r["n"] for r in answer) / total
    for c, r in results.items():
        key = "top1" if is_answer(r) else "ppl_ratio"
        out[f"logic_{c}_{key}"] = r[key]
    return out


def run_suite(model: nn.Module, tokenizer: Any, n: int = 100, device: torch.device | str = "cpu") -> dict[str, float]:
    """The suite as the trainer logs it at each validation (mean biases, seed 0)."""
    return flat_summary(evaluate_suite(model, tokenizer, n=n, device=device))


def format_table(results: dict[str, dict[str, Any]]) -> str:
    def ci(r: dict, key: str, fmt: str) -> str:
        lo, hi = r[f"{key}_ci"]
        return f"{r[key]:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"

    width = max([11, *(len(c) for c in results)])
    answers = [c for c, r in results.items() if is_answer(r)]
    pairs = [c for c, r in results.items() if not is_answer(r)]
    lines: list[str] = []
    if answers:
        head = f"{'category':<{width}} {'n':>4}  {'top-1':<19} {'top-5':<19} {'mean rank':<28} {'log-prob':<24}"
        lines += [head, "-" * len(head)]
        for c in answers:
            r = results[c]
            lines.append(
                f"{c:<{width}} {r['n']:>4}  {ci(r, 'top1', '.2f'):<19} {ci(r, 'top5', '.2f'):<19} "
                f"{ci(r, 'mean_rank', '.1f'):<28} {ci(r, 'logprob', '.2f'):<24}"
            )
    if pairs:
        head2 = f"{'category':<{width}} {'n':>4}  {'ppl ratio':<22} {'prefers reference':<19}"
        lines += ["", head2, "-" * len(head2)] if lines else [head2, "-" * len(head2)]
        for c in pairs:
            r = results[c]
            lines.append(f"{c:<{width}} {r['n']:>4}  {ci(r, 'ppl_ratio', '.3f'):<22} {ci(r, 'prefer', '.2f'):<19}")
    head3 = f"{'category':<{width}} {'n':>4}  {'first-token loss':<24} {'top-1':<19} {'top-5':<19} ppl ratio (mean)"
    lines += ["", "the paper's scores (no end-of-text prefix; answers by their first token):", head3, "-" * len(head3)]
    for c, r in results.items():
        paper = r["paper"]
        if is_answer(r):
            row = f"{ci(paper, 'first_token_loss', '.3f'):<24} {ci(paper, 'top1', '.2f'):<19} "
            row += f"{ci(paper, 'top5', '.2f'):<19}"
        else:
            row = f"{'':<24} {'':<19} {'':<19} {ci(paper, 'ppl_ratio', '.3f')}"
        lines.append(f"{c:<{width}} {r['n']:>4}  {row}")
    summary = flat_summary(results)
    if "logic_loss" in summary:
        loss = summary["logic_loss"]
        lines.append(f"logic loss (the paper's: mean first-token loss over every answer item): {loss:.4f}")
    cut = sum(r.get("truncated", 0) for r in results.values())
    if cut:
        lines.append(f"note: {cut} sequence(s) longer than the context were cut from the left")
    return "\n".join(line.rstrip() for line in lines)


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Run the logic-puzzle suite on a trained run (mean biases by default).")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=100, help="items per category")
    p.add_argument("--seed", type=int, default=0, help="seed of the item templates")
    p.add_argument("--items", default=None, help="a JSON-lines file of items to score instead of the suite")
    p.add_argument("--out", default=None, help="JSON file (default RUN_DIR/logic.json; others with --no_bias, --items)")
    p.add_argument("--no_bias", action="store_true", help="drop the mean attention biases at inference")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file (default: the run's latest)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_device()
    args = p.parse_args(argv)
    require(args.batch_size >= 1, f"--batch_size must be at least 1, got {args.batch_size}; pass --batch_size 16")
    args.device = resolve_device(args.device)
    items = read_items(args.items) if args.items else suite_items(args.n, args.seed)
    run = load_run(args.run_dir, args.device, args.checkpoint)
    # eval.report reads logic.json: the built-in suite with the mean biases
    default = f"logic_{Path(args.items).stem}" if args.items else "logic"
    default += "_nobias.json" if args.no_bias else ".json"
    out = Path(args.out) if args.out else run.run_dir / default
    check_file_target(out, "--out")
    biases = {} if args.no_bias else None
    results = evaluate_items(run.model, run.tokenizer, items, args.device, biases, args.batch_size, progress=True)
    source = {"items": str(args.items)} if args.items else {"n": args.n, "seed": args.seed}
    meta = {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        **source,
        "biases": "none" if args.no_bias else "mean",
        "tokenizer": run.tokenizer.name,
    }
    record = {"meta": meta, "categories": results, "summary": flat_summary(results)}
    write_file(out, json.dumps(record, indent=2), "--out")
    print(format_table(results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

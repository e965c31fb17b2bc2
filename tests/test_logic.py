"""The logic suite: items deterministic, distinct and correct (checked by independent solvers); the
scorer checked against hand-computed values on a model whose logits are known."""

import math
import re
import string
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from configs import UserError
from data.tokenizer import byte_tokenizer, gpt2_tokenizer
from eval.logic import (
    ANSWER_CATEGORIES,
    CATEGORIES,
    PAIR_CATEGORIES,
    Item,
    bootstrap_mean_ci,
    evaluate_items,
    flat_summary,
    format_table,
    generate_items,
    main,
    read_items,
    run_suite,
    wilson,
)
from model import GPT, GPTConfig

from helpers import gpt2_ranks

# ---------------------------------------------------------------- items


@pytest.mark.parametrize("category", CATEGORIES)
def test_items_are_deterministic_per_seed_and_distinct(category):
    a = generate_items(category, 100, seed=7)
    assert a == generate_items(category, 100, seed=7)
    assert a != generate_items(category, 100, seed=8)
    assert len(set(a)) == 100 and all(i.category == category for i in a)
    assert generate_items(category, 20, seed=7) == a[:20]  # a smaller suite is a prefix of a larger one


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def solve(item: Item) -> str:
    """The answer worked out from the prompt text alone, as an independent check of the templates."""
    p = item.prompt
    if item.category == "numeric":
        s = _numbers(p)
        if item.kind == "arithmetic":
            d = s[1] - s[0]
            assert all(b - a == d for a, b in zip(s, s[1:])) and d > 0
            return f" {s[-1] + d}"
        if item.kind == "geometric":
            r = s[1] // s[0]
            assert all(b == a * r for a, b in zip(s, s[1:])) and r > 1
            return f" {s[-1] * r}"
        assert all(s[k] == s[k - 1] + s[k - 2] for k in range(2, len(s)))
        return f" {s[-1] + s[-2]}"
    if item.category == "alphabetic":
        letters = [c for c in p if c.isalpha()]
        idx = [string.ascii_lowercase.index(c.lower()) for c in letters]
        step = (idx[1] - idx[0]) % 26
        assert all((b - a) % 26 == step for a, b in zip(idx, idx[1:]))
        nxt = string.ascii_lowercase[(idx[-1] + step) % 26]
        wraps = any(b < a for a, b in zip(idx, idx[1:] + [(idx[-1] + step) % 26]))
        assert wraps == (item.kind == "wrap")
        return f" {nxt.upper() if letters[0].isupper() else nxt}"
    if item.category in ("near", "far"):
        facts = re.findall(r"(\w+) has (\d)\.", p)
        names = [n for n, _ in facts]
        assert len(set(names)) == len(names)
        query = p.rsplit(" ", 2)[-2]
        assert names.index(query) == (len(names) - 1 if item.category == "near" else 0)
        return f" {dict(facts)[query]}"
    if item.category == "inference":
        if item.kind == "syllogism":
            edges = dict(re.findall(r"All (\w+) are (\w+)\.", p))
            start = re.search(r"So all (\w+) are$", p).group(1)
            return f" {edges[edges[start]]}"
        edges = dict(re.findall(r"(\w+) is \w+ than (\w+)\.", p))
        start = re.search(r"So (\w+) is \w+ than$", p).group(1)
        return f" {edges[edges[start]]}"
    if item.category == "copying":
        first, second = p.split(". ")
        words, copied = first.split(), second.split()
        assert words[: len(copied)] == copied and len(copied) == len(words) - 1
        return f" {words[-1]}"
    raise AssertionError(item.category)


@pytest.mark.parametrize("category", ANSWER_CATEGORIES)
def test_answers_are_correct_by_construction(category):
    items = generate_items(category, 150, seed=1)
    for item in items:
        assert solve(item) == item.answer, item
    assert len({i.kind for i in items}) == {"numeric": 3, "alphabetic": 2, "inference": 2}.get(category, 1)


def test_pair_items_differ_only_as_the_category_says():
    for item in generate_items("negation", 100):
        assert item.answer == ""
        if item.kind == "is":
            assert item.contrast == item.prompt.replace(" is ", " is not ")
        else:
            name, verb, rest = item.prompt.split(" ", 2)
            assert item.contrast == f"{name} does not {verb.removesuffix('s')} {rest}"
    for item in generate_items("syntax", 100):
        assert item.contrast == "".join(c for c in item.prompt if c not in ",.?") and item.contrast != item.prompt


def test_too_many_items_is_a_user_error():
    from configs import UserError

    with pytest.raises(UserError, match="smaller --n"):
        generate_items("alphabetic", 5000)


# ---------------------------------------------------------------- scoring on a known model

ALPHABET = "abcdefghij"


def letter_tokenizer() -> SimpleNamespace:
    """ids 0..9 for a..j, 10 = end of text."""
    return SimpleNamespace(name="letters", vocab_size=11, eot=10, encode=lambda s: [ALPHABET.index(c) for c in s])


class SuccessorModel(nn.Module):
    """A bigram stub: after token x the logit of y is -2|y - (x + 1)| (+ 5 on padded ids, never scored)."""

    def __init__(self):
        super().__init__()
        self.config = GPTConfig(vocab_size=11, block_size=32, n_layer=1, n_head=1, n_embd=8)
        self.seen_biases = []

    def table(self) -> torch.Tensor:
        y = torch.arange(self.config.padded_vocab_size, dtype=torch.float)
        t = -2 * (y[None, :] - (torch.arange(11.0)[:, None] + 1)).abs()
        t[:, 11:] = 5.0  # padding rows must be excluded from ranks and probabilities
        return t

    def forward(self, idx, targets=None, biases=None):
        self.seen_biases.append(biases)
        return self.table()[idx], None


def expected_token(prev: int, y: int) -> tuple[float, int]:
    logits = -2 * (torch.arange(11.0) - (prev + 1)).abs()
    return float(logits.log_softmax(0)[y]), int(1 + (logits > logits[y]).sum())


def test_scores_match_hand_computed_values_on_a_known_model():
    tok = letter_tokenizer()
    items = {
        "numeric": [
            Item("numeric", "k", "abc", "d"),
            Item("numeric", "k", "abc", "de"),
            Item("numeric", "k", "abc", "ee"),
        ],
        "negation": [Item("negation", "k", "abcd", contrast="adcb")],
    }
    model = SuccessorModel()
    res = evaluate_items(model, tok, items)
    # "d" after "c": rank 1; "de": both rank 1; "ee": 'e' after 'c' ties with 'c' (rank 2), 'e' after 'e' rank 2
    lp = [
        expected_token(2, 3)[0],
        expected_token(2, 3)[0] + expected_token(3, 4)[0],
        expected_token(2, 4)[0] + expected_token(4, 4)[0],
    ]
    ranks = [1, 1, max(expected_token(2, 4)[1], expected_token(4, 4)[1])]
    assert ranks[2] == 2
    r = res["numeric"]
    assert r["n"] == 3 and r["top1"] == pytest.approx(2 / 3) and r["top5"] == 1.0
    assert r["mean_rank"] == pytest.approx(np.mean(ranks))
    assert r["logprob"] == pytest.approx(np.mean(lp), abs=1e-5)
    assert r["top1_ci"] == pytest.approx(wilson(2, 3))
    # perplexity ratio: every sentence starts after the end-of-text token (id 10)
    ref = [expected_token(p, y)[0] for p, y in zip([10, 0, 1, 2], [0, 1, 2, 3])]
    con = [expected_token(p, y)[0] for p, y in zip([10, 0, 3, 2], [0, 3, 2, 1])]
    ratio = math.exp(-np.mean(con) + np.mean(ref))
    assert res["negation"]["ppl_ratio"] == pytest.approx(ratio, rel=1e-5)
    assert res["negation"]["prefer"] == 1.0 and ratio > 1
    assert model.seen_biases and all(b is None for b in model.seen_biases)


def test_the_papers_scores_match_hand_computed_values_on_a_known_model():
    """No end-of-text prefix; an answer item counts by its first token; pairs by the mean ratio."""
    tok = letter_tokenizer()
    items = {
        "seq": [Item("seq", "k", "abc", "d"), Item("seq", "k", "abc", "ee"), Item("seq", "k", "ab", "j")]
        + [Item("seq", "k", "aj", "a")],
        "pair": [Item("pair", "k", "abcd", contrast="adcb"), Item("pair", "k", "ba", contrast="bc")],
    }
    res = evaluate_items(SuccessorModel(), tok, items)
    first = [expected_token(2, 3), expected_token(2, 4), expected_token(1, 9), expected_token(9, 0)]  # (log p, rank)
    paper = res["seq"]["paper"]
    assert paper["first_token_loss"] == pytest.approx(-np.mean([lp for lp, _ in first]), abs=1e-5)
    ranks = [r for _, r in first]
    assert ranks == [1, 2, 10, 11]
    assert paper["top1"] == pytest.approx(1 / 4) and paper["top5"] == pytest.approx(2 / 4)
    assert paper["in_top10"] == 0.75 and paper["mean_rank_top10"] == pytest.approx(np.mean(ranks[:3]))
    whole = [-expected_token(2, 3)[0], -(expected_token(2, 4)[0] + expected_token(4, 4)[0]) / 2]
    whole += [-expected_token(1, 9)[0], -expected_token(9, 0)[0]]
    assert paper["completion_loss"] == pytest.approx(np.mean(whole), abs=1e-5)

    def ratio(ref: str, con: str) -> float:  # no prefix: the first token is context, not scored
        nll = [[-expected_token(ord(a) - 97, ord(b) - 97)[0] for a, b in zip(t, t[1:])] for t in (ref, con)]
        return math.exp(np.mean(nll[1]) - np.mean(nll[0]))

    want = np.mean([ratio("abcd", "adcb"), ratio("ba", "bc")])
    assert res["pair"]["paper"]["ppl_ratio"] == pytest.approx(want, rel=1e-5)
    ours = res["pair"]["ppl_ratio"]  # a geometric mean, with the prefix: a different number
    assert abs(ours - want) > 1e-3
    summary = flat_summary(res)
    assert summary["logic_loss"] == pytest.approx(paper["first_token_loss"])
    assert "logic loss (the paper's" in format_table(res)


def write_items(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_item_file_of_any_categories_is_scored_like_the_suite(tmp_path):
    path = write_items(
        tmp_path / "mine.jsonl",
        [
            '{"category": "count", "prompt": "abc", "answer": "d", "kind": "succ"}',
            "",
            '{"category": "flip", "prompt": "abcd", "contrast": "adcb"}',
            '{"category": "count", "prompt": "abc", "answer": "ee"}',
        ],
    )
    items = read_items(path)
    assert list(items) == ["count", "flip"] and len(items["count"]) == 2
    assert items["count"][0] == Item("count", "succ", "abc", "d") and items["count"][1].kind == "count"
    assert items["flip"] == [Item("flip", "flip", "abcd", contrast="adcb")]
    res = evaluate_items(SuccessorModel(), letter_tokenizer(), items)
    count = [Item("count", "k", "abc", "d"), Item("count", "k", "abc", "ee")]
    same = evaluate_items(SuccessorModel(), letter_tokenizer(), {"count": count})
    assert res["count"]["logprob"] == same["count"]["logprob"] and res["count"]["top1"] == 0.5
    assert "ppl_ratio" in res["flip"] and "flip" in format_table(res)


@pytest.mark.parametrize(
    "line, needle",
    [
        ('{"category": "a", "prompt": "x", "answer": "y"', "not valid JSON"),
        ('["a", "x"]', "expected a JSON object"),
        ('{"category": "a", "prompt": "x"}', 'exactly one of "answer"'),
        ('{"category": "a", "prompt": "x", "answer": "y", "contrast": "z"}', 'exactly one of "answer"'),
        ('{"category": "", "prompt": "x", "answer": "y"}', '"category" must be a non-empty string'),
        ('{"category": "a", "prompt": "x", "answer": 5}', '"answer" must be a non-empty string'),
        ('{"category": "a", "prompt": "x", "answer": "y", "weight": 2}', "unknown key 'weight'"),
        ('{"category": "good", "prompt": "x", "contrast": "y"}', "category 'good' holds answer items (line 1)"),
    ],
)
def test_a_malformed_item_line_is_a_one_line_error_naming_the_line(tmp_path, line, needle):
    path = write_items(tmp_path / "bad.jsonl", ['{"category": "good", "prompt": "abc", "answer": "d"}', line])
    with pytest.raises(UserError) as e:
        read_items(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: ") and needle in msg and "\n" not in msg


def test_the_cli_reports_a_bad_item_file_in_one_line(tmp_path, capsys):
    path = write_items(tmp_path / "bad.jsonl", ["{oops"])
    assert main([str(tmp_path), "--items", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}:1: not valid JSON") and len(err.splitlines()) == 1


def test_no_bias_passes_an_empty_bias_dict_and_batching_does_not_change_scores():
    tok = letter_tokenizer()
    items = {"copying": [Item("copying", "k", "ab" * (i + 1), "c" * (i % 3 + 1)) for i in range(9)]}
    model = SuccessorModel()
    one = evaluate_items(model, tok, items, biases={}, batch_size=1)
    four = evaluate_items(model, tok, items, biases={}, batch_size=4)
    assert all(b == {} for b in model.seen_biases)
    assert one["copying"]["logprob"] == pytest.approx(four["copying"]["logprob"])
    assert one["copying"]["mean_rank"] == four["copying"]["mean_rank"]


def test_long_prompts_are_cut_from_the_left_and_counted():
    tok = letter_tokenizer()
    items = {"far": [Item("far", "k", "abcdefghij" * 5, "a"), Item("far", "k", "abc", "d")]}
    res = evaluate_items(SuccessorModel(), tok, items)
    assert res["far"]["truncated"] == 1 and res["far"]["top1"] == 0.5  # 'a' after 'j' is not the successor
    pair = {"syntax": [Item("syntax", "k", "abcdefghij" * 4, contrast="abc")]}  # the sentence outgrows the context
    res = evaluate_items(SuccessorModel(), tok, pair)
    assert res["syntax"]["truncated"] == 1 and res["syntax"]["n"] == 1


def test_intervals():
    lo, hi = wilson(50, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    x = np.random.default_rng(0).normal(3.0, 1.0, 200)
    a, b = bootstrap_mean_ci(x)
    assert (a, b) == bootstrap_mean_ci(x) and a < x.mean() < b
    assert b - a == pytest.approx(2 * 1.96 * x.std() / math.sqrt(200), rel=0.15)


# ---------------------------------------------------------------- the real model and tokenizers


@pytest.mark.parametrize("tokenizer", ["byte", "gpt2"])
def test_run_suite_on_a_tiny_gpt(tokenizer):
    tok = byte_tokenizer() if tokenizer == "byte" else gpt2_tokenizer(str(gpt2_ranks()))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16)).eval()
    out = run_suite(model, tok, n=4)
    expected = {"logic_top1", "logic_top5", "logic_loss"}
    expected |= {f"logic_{c}_top1" for c in ANSWER_CATEGORIES} | {f"logic_{c}_ppl_ratio" for c in PAIR_CATEGORIES}
    assert set(out) == expected
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert model.training is False

"""Exports made with this transformers load under the other end of the declared range (4.57 and 5.x).

.ci/run makes a second environment with the other version and points SYMBREAK_OTHER_PYTHON at it; the
export is written here, then loaded and run there, and the two must agree on ids and logits.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

import train
from eval import hf

from helpers import BYTE_QUICKSTART, QUIET, TINY_GPT

OTHER = os.environ.get("SYMBREAK_OTHER_PYTHON")
LOAD = """
import json, sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
out = {}
for d in sys.argv[1:]:
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval()
    ids = tok("The cat sat.", return_tensors="pt").input_ids
    with torch.no_grad():
        out[d] = {"ids": ids.tolist(), "logits": model(ids).logits[0, -1].tolist(), "version": transformers.__version__}
print(json.dumps(out))
"""


@pytest.mark.skipif(not OTHER, reason="set SYMBREAK_OTHER_PYTHON to a python with another transformers (.ci/run does)")
def test_exports_load_under_the_other_transformers(tmp_path):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=32, n_layer=1, n_head=2, n_embd=32)).save_pretrained(
        tmp_path / "gpt2"
    )
    assert hf.main(["import", str(tmp_path / "gpt2"), str(tmp_path / "gelu"), "--tokenizer", "byte"]) == 0
    prelu = [BYTE_QUICKSTART, f"--run.dir={tmp_path}", "--run.name=prelu", "--train.max_steps=2", "--eval.interval=0"]
    prelu += [*TINY_GPT, *QUIET]
    assert train.main(prelu) == 0
    exports = []
    for run in ("gelu", "prelu"):
        exports.append(str(tmp_path / f"export_{run}"))
        assert hf.main(["export", str(tmp_path / run), exports[-1]]) == 0
    there = json.loads(subprocess.run([OTHER, "-c", LOAD, *exports], capture_output=True, text=True, check=True).stdout)
    for d in exports:
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval()
        ids = tok("The cat sat.", return_tensors="pt").input_ids
        assert there[d]["ids"] == ids.tolist()
        with torch.no_grad():
            torch.testing.assert_close(torch.tensor(there[d]["logits"]), model(ids).logits[0, -1], atol=1e-4, rtol=0)

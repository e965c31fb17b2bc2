"""The docs' example checker: it reruns `$` commands, masks what varies, and catches a stale number."""

from __future__ import annotations

import importlib.util
import sys

from helpers import ROOT

spec = importlib.util.spec_from_file_location("check_examples", ROOT / "docs" / "check_examples.py")
check_examples = importlib.util.module_from_spec(spec)
sys.modules["check_examples"] = check_examples  # its dataclasses look their module up there
spec.loader.exec_module(check_examples)

DOC = """
Set-up, run first:

<!-- setup -->
```
$ mkdir -p {tmp} && printf 'a\\nb\\nc\\n' > {tmp}/three.txt
```

An example:

```
$ wc -l < {tmp}/three.txt && echo "done in 12.5s at 3,400 tok/s"
3
done in 0.4s at 12 tok/s
$ printf 'first\\nsecond\\nthird\\nlast\\n'
first
...
last
```

<!-- unchecked: needs a GPU -->
```
$ nvidia-smi
whatever
```
"""


def test_examples_that_still_hold_pass_with_times_and_rates_masked(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(DOC.format(tmp=tmp_path / "work"))
    kinds = [ex.kind for ex in check_examples.parse(doc)]
    assert kinds == ["setup", "example", "unchecked"]
    assert check_examples.check(doc) == []


def test_a_stale_number_is_caught_and_update_writes_the_new_one(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(DOC.format(tmp=tmp_path / "work").replace("\n3\ndone", "\n4\ndone"))
    failures = check_examples.check(doc)
    assert len(failures) == 1 and "-4" in failures[0] and "+3" in failures[0]
    check_examples.check(doc, update=True)
    assert check_examples.check(doc) == []
    assert "\n3\ndone in 12.5s at 3,400 tok/s\n" in doc.read_text()

"""The built-in corpus: the Python standard library's own documentation, no download needed.

It is the text of ``pydoc_data.topics`` (the language reference topics behind ``help()``) followed
by every docstring (module, class, function) of the standard library's Python sources, read with
``ast`` so that nothing is imported. About 2.1 MB of English technical prose on CPython 3.11; the
exact bytes depend on the Python version, so ``meta.json`` records the corpus's sha256.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}


def documents() -> Iterator[str]:
    """Yield the corpus one document at a time in a fixed order."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name].strip()
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    yield doc.strip()

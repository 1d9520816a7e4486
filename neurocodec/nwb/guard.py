"""Worker processes and the main script: the `if __name__ == "__main__":` guard.

The converter starts its worker processes with "spawn" (forking a process that has HDF5 files
open is not safe). A spawned process imports the main script again before it can work; a script
that converts at its top level, outside an `if __name__ == "__main__":` block, would then start
a conversion inside every worker, which Python refuses: the workers die and the pool breaks.
`unguarded_main_call` finds that case before any process starts, so the error can say what is
wrong instead of blaming an input file.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SPAWN_ADVICE = ("worker processes are started with 'spawn', which imports the main script again in each "
                "worker: put the code that converts under `if __name__ == \"__main__\":` (see the README), "
                "or convert with workers=1")


def _is_main_test(node: ast.AST) -> bool:
    """Whether `node` is the test `__name__ == "__main__"` (either way round)."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
        return False
    sides = [node.left, node.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    mains = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(mains) == 1


def _guarded(tree: ast.Module, line: int) -> bool:
    """Whether `line` lies inside a top-level `if __name__ == "__main__":` block of `tree`."""
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test):
            if node.lineno <= line <= (node.end_lineno or node.lineno):
                return True
    return False


def unguarded_main_call() -> Path | None:
    """The main script, when the current call comes from its top-level code outside an
    `if __name__ == "__main__":` block; None otherwise (or when that cannot be told)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__":
            script = Path(frame.f_code.co_filename)
            try:
                tree = ast.parse(script.read_text(encoding="utf8"))
            except (OSError, SyntaxError, ValueError):
                return None
            return None if _guarded(tree, frame.f_lineno) else script
        frame = frame.f_back
    return None

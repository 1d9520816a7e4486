"""Code blocks of the user guide, taken by heading, with only the import line changed.

The guide is read from $NEUROCODEC_GUIDE, else from the team's shared spec beside the repository
(`../shared/spec/seed-guide.md`), else from the copy in tests/data, so the tests run anywhere and
an edit to the shared guide is tested as it stands.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

OLD_IMPORT = "from neuros_neurofm.datasets import"
NEW_IMPORT = "from neurocodec.datasets import"
_REPO = Path(__file__).resolve().parents[1]


def guide_path() -> Path:
    """Where the guide is read from."""
    for candidate in (os.environ.get("NEUROCODEC_GUIDE"), _REPO.parent / "shared/spec/seed-guide.md",
                      _REPO / "tests/data/seed-guide.md"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError("the user guide (seed-guide.md) is in none of the places above; a missing "
                            "guide fails the tests rather than skipping them")


def guide_block(heading: str, *, replace: dict[str, str] | None = None) -> str:
    """The first ```python block under `heading`, with the import line changed (and `replace` applied)."""
    text = guide_path().read_text()
    match = re.search(rf"^#+ {re.escape(heading)}\s*$", text, flags=re.M)
    assert match, f"no heading {heading!r} in {guide_path()}"
    block = re.search(r"```python\n(.*?)\n```", text[match.end():], flags=re.S)
    assert block, f"no python block under {heading!r}"
    code = block.group(1)
    assert code.count(OLD_IMPORT) <= 1, code  # a block may rely on names imported earlier
    code = code.replace(OLD_IMPORT, NEW_IMPORT)
    for old, new in (replace or {}).items():
        assert old in code, f"{old!r} not in the block under {heading!r}"
        code = code.replace(old, new)
    return code


def run_block(heading: str, namespace: dict | None = None, *, replace: dict[str, str] | None = None) -> dict:
    """Exec a guide block in `namespace` (a fresh one by default) and return the namespace."""
    namespace = {"__name__": "__guide__", **(namespace or {})}
    exec(compile(guide_block(heading, replace=replace), f"<guide: {heading}>", "exec"), namespace)
    return namespace

"""Library messages in the words of the command line.

The converter, the writer, the readers and the plugins name their Python arguments in their
messages (`pass overwrite=True`, `series={'eeg': name}`, `shard_size must be ...`); a command
has flags (`--overwrite`, `--series eeg=NAME`, `--shard-size`). `in_flags` rewrites a message
for one command from that command's own flags (`flags_of` its parser), so it never suggests a
flag the command does not have; each error line of the `neurocodec` command goes through it.
"""

from __future__ import annotations

import argparse
import re
import shlex
from typing import Mapping

# Python argument names that a flag of another name sets, per the library's wording.
ALIASES = {"fields": "field", "field_codecs": "field_codec"}
# Phrases with no argument=value form to rewrite, each applied when the command has the flag.
_PHRASES = (
    ("field_codec", re.compile(r"\(WebDatasetWriter\(codecs=\{'([\w-]+)': \{'id': \.\.\.\}\}\)\)"),
     r"""(--field-codec '\1={"id": ...}')"""),
    ("field", re.compile(r"\bboth in modalities and in fields\b"), "both in --modalities and in --field"),
    ("field", re.compile(r"\bboth in fields and in series\b"), "both in --field and in --series"),
)
# What no flag sets, said as a command-line user can act on it.
_NO_FLAG = ((re.compile(r"\bmax_member_bytes= or "), ""),)
_BEFORE, _AFTER = r"(?<![\w./-])", r"(?![\w./-])"
_VALUE = r"""('[^']*'|"[^"]*"|[\w.+-]+)"""
_DICT = re.compile(_BEFORE + r"([a-z][a-z_]*)=\{([^{}]*)\}")
_UNSAFE = re.compile(r"""[\s'"$`\\;&|()*?]""")  # what a shell would not take as it is
_ITEM = re.compile(r"""\s*['"]?([<>\w-]+)['"]?\s*:\s*(?:['"]([^'"]*)['"]|(\w+))\s*""")


def flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Argument name (`shard_size`) -> its long flag (`--shard-size`), for every optional
    argument of `parser`, with the library's names for the same things (ALIASES)."""
    flags = {}
    for action in parser._actions:  # argparse offers no public list of a parser's arguments
        long = [s for s in action.option_strings if s.startswith("--")]
        if long and action.dest != "help":
            flags[action.dest] = max(long, key=len)
    flags.update({name: flags[dest] for name, dest in ALIASES.items() if dest in flags})
    return flags


def in_flags(message: str, flags: Mapping[str, str]) -> str:
    """`message` with the Python arguments it names that `flags` has as flags written as those
    flags: `x=True` -> `--x`, `x=5` -> `--x 5`, `x={'a': b}` -> `--x a=B`, `x must` -> `--x
    must`, `some_name` -> `--some-name`."""
    for dest, pattern, words in _PHRASES:
        if dest in flags:
            message = pattern.sub(words, message)
    for pattern, words in _NO_FLAG:
        message = pattern.sub(words, message)
    message = _DICT.sub(lambda m: _dict_flag(m, flags), message)
    for name in sorted(flags, key=len, reverse=True):
        flag, word = flags[name], re.escape(name)
        message = re.sub(_BEFORE + word + r"=True\b", flag, message)
        message = re.sub(_BEFORE + word + "=" + _VALUE, lambda m: f"{flag} {m.group(1).strip(chr(39) + chr(34))}",
                         message)
        message = re.sub(_BEFORE + word + r"(?= (must|names)\b)", flag, message)
        if "_" in name:
            message = re.sub(_BEFORE + word + _AFTER, flag, message)
    return message


def _dict_flag(match: re.Match, flags: Mapping[str, str]) -> str:
    """`series={'eeg': name}` -> `--series eeg=NAME` (a quoted value as it is, a bare Python
    name in capitals: a placeholder)."""
    name, body = match.group(1), match.group(2)
    items = [_ITEM.fullmatch(item) for item in body.split(",")]
    if name not in flags or not all(items):
        return match.group(0)
    pairs = [f"{item.group(1)}={item.group(2) if item.group(2) is not None else item.group(3).upper()}"
             for item in items if item is not None]
    return f"{flags[name]} {' '.join(shlex.quote(p) if _UNSAFE.search(p) else p for p in pairs)}"

"""Fenced code blocks of the Markdown docs, with the ``<!-- docs-test: ... -->`` markers that precede them.

Markers (an HTML comment on the line(s) right before the opening fence; invisible when rendered):

* ``<!-- docs-test: skip (reason) -->``: the block is not run; the test is reported as skipped with the reason.
  Only for blocks that cannot run on a test machine (multi-node or GPU launches, installs into a new venv).
* ``<!-- docs-test: args ARGS -->``: ``ARGS`` is appended to every ``lightning-async ...`` and
  ``python -m lightning_async.cli ...`` command of a ``bash``/``console`` block (e.g. ``--trainer.max_epochs=1``),
  so that the page can show the real command while the test runs a short version of it.

Languages: ``python`` blocks run as script files; ``bash``/``sh``/``shell`` blocks run with ``bash -euo pipefail``;
``console`` blocks run their ``$ `` lines; ``yaml`` blocks are parsed (and a recipe-style one, with a ``trainer``
or ``model`` key, is checked by ``lightning-async fit --print_config``); ``text`` blocks are prose in monospace
(formulas, output, tables) and are not run. A block without a language is an error: say what it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RUNNABLE = {"python", "py", "bash", "sh", "shell", "console", "yaml", "yml"}
NOT_CODE = {"text", "output", "math"}
_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*([\w+-]*)[^\n`]*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
_COMMAND = re.compile(r"^\s*(\$ )?(python3?|lightning-async|torchrun|accelerate|pip|pytest|bash)\b")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}:{self.lang or 'untagged'}"

    @property
    def generated(self) -> bool:
        return self.path.name == "api.md"


def parse_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence[0] * len(fence)) and not lines[i].strip(fence[0]).strip()
        ):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        markers: dict[str, str] = {}
        j = start - 1
        while j >= 0 and (mm := _MARKER.match(lines[j])):
            markers.setdefault(mm.group(1), mm.group(2))
            j -= 1
        blocks.append(Block(path, start + 1, lang, "\n".join(body) + "\n", markers))
    return blocks


def all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in parse_blocks(path)]


def looks_like_commands(text: str) -> list[str]:
    return [line for line in text.splitlines() if _COMMAND.match(line)]


def logical_lines(script: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return out


_CLI = re.compile(r"^\s*(lightning-async|python3? -m lightning_async\.cli)\b")


def with_args(line: str, args: str) -> str:
    """Append ``args`` to a ``lightning-async`` command line, before any trailing comment."""
    if not args or not _CLI.match(line):
        return line
    code, comment = line, ""
    hash_at = _unquoted_hash(line)
    if hash_at is not None:
        code, comment = line[:hash_at].rstrip(), "  " + line[hash_at:]
    return f"{code} {args}{comment}"


def _unquoted_hash(line: str) -> int | None:
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return k
    return None


def shell_script(block: Block) -> str:
    """The commands of a ``bash``/``console`` block, with the ``args`` marker applied."""
    if block.lang == "console":
        lines = [line[2:] for line in block.text.splitlines() if line.startswith("$ ")]
        script_lines = logical_lines("\n".join(lines))
    else:
        script_lines = logical_lines(block.text)
    args = block.markers.get("args", "")
    return "\n".join(with_args(line, args) for line in script_lines) + "\n"

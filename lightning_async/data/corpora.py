"""Real text corpora for :class:`~lightning_async.data.TextDataModule`: one built offline, one downloaded.

* ``"python_docs"`` (the default, no download): the documentation of about a hundred modules of the Python
  standard library that runs the code (module, class, function and method docstrings, in a fixed order), about
  1 MB of English technical prose with code. The same interpreter version gives the same bytes; the text is
  cached in ``data_dir`` under a name that carries the Python version.
* ``"tiny_shakespeare"``: the 1,115,394-byte Shakespeare corpus of Karpathy's char-rnn, the usual small
  character-level benchmark. Downloaded once into ``data_dir`` (``download=True``), checked by size, then read
  from disk, as torchvision's datasets do.
"""

from __future__ import annotations

import importlib
import inspect
import os
import platform
import tempfile
import urllib.request
import warnings
from pathlib import Path

CORPORA = ("python_docs", "tiny_shakespeare")
DEFAULT_DATA_DIR = "~/.cache/lightning_async"
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_BYTES = 1_115_394

#: standard-library modules whose documentation makes the ``python_docs`` corpus (those missing are skipped)
PYTHON_DOCS_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio.events", "asyncio.streams", "asyncio.tasks", "base64", "binascii",
    "bisect", "builtins", "bz2", "cProfile", "calendar", "cmath", "cmd", "codecs", "collections", "collections.abc",
    "concurrent.futures", "configparser", "contextlib", "contextvars", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "dis", "doctest", "email.message", "email.utils", "enum", "filecmp", "fileinput",
    "fnmatch", "fractions", "ftplib", "functools", "gc", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq",
    "hmac", "html", "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json",
    "linecache", "locale", "logging", "lzma", "mailbox", "math", "multiprocessing.pool", "netrc", "numbers",
    "operator", "optparse", "os", "pathlib", "pdb", "pickle", "platform", "plistlib", "poplib", "pprint", "pstats",
    "pydoc", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal",
    "smtplib", "socket", "socketserver", "sqlite3", "ssl", "stat", "statistics", "string", "stringprep", "struct",
    "subprocess", "symtable", "sys", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "token",
    "tokenize", "trace", "traceback", "types", "typing", "unicodedata", "unittest", "unittest.mock",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.etree.ElementTree",
    "xmlrpc.client", "zipfile", "zlib", "zoneinfo",
)


def python_docs_text() -> str:
    """The ``python_docs`` corpus: the docstrings of :data:`PYTHON_DOCS_MODULES` and of their public classes,
    functions and methods, each under a heading with its dotted name, in sorted order."""
    parts: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases (typing.io, ...) warn when their docs are read
        for name in PYTHON_DOCS_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            doc = inspect.getdoc(module)
            if doc:
                parts.append(f"# {name}\n\n{doc}\n")
            for attr in sorted(dir(module)):
                obj = getattr(module, attr, None)
                if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
                    continue
                if getattr(obj, "__module__", None) != module.__name__ and not inspect.isbuiltin(obj):
                    continue  # imported from elsewhere: documented under its own module
                doc = inspect.getdoc(obj)
                if doc:
                    parts.append(f"## {name}.{attr}\n\n{doc}\n")
                if inspect.isclass(obj):
                    for method in sorted(vars(obj)):
                        member = getattr(obj, method, None)
                        if not method.startswith("_") and inspect.isroutine(member) and (doc := inspect.getdoc(member)):
                            parts.append(f"### {name}.{attr}.{method}\n\n{doc}\n")
    return "\n".join(parts)


def corpus_path(corpus: str, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, download: bool = False,
                url: str = TINY_SHAKESPEARE_URL) -> Path:
    """The corpus as a file in ``data_dir``: built (``python_docs``) or downloaded (``tiny_shakespeare``) if missing.

    Args:
        corpus: One of :data:`CORPORA`.
        data_dir: Cache folder (created if needed).
        download: Download ``tiny_shakespeare`` if it is not in ``data_dir`` yet.
        url: Where to download it from (a mirror, or a ``file://`` URL).

    Raises:
        ValueError: an unknown corpus.
        FileNotFoundError: ``tiny_shakespeare`` is not in ``data_dir`` and ``download`` is false.
        RuntimeError: the download failed or has the wrong size.
    """
    if corpus not in CORPORA:
        raise ValueError(f"TextDataModule: corpus must be one of {CORPORA}, got {corpus!r}.")
    folder = Path(data_dir).expanduser()
    if corpus == "python_docs":
        target = folder / f"python_docs-{platform.python_version()}.txt"
        if not target.is_file():
            _write_atomically(target, python_docs_text().encode("utf-8"))
        return target
    target = folder / "tiny_shakespeare.txt"
    if target.is_file() and target.stat().st_size == TINY_SHAKESPEARE_BYTES:
        return target
    if not download:
        raise FileNotFoundError(
            f"TextDataModule: tiny_shakespeare is not in data_dir={str(folder)!r}. Pass `--data.download=true` to "
            f"download it ({TINY_SHAKESPEARE_BYTES:,} bytes from {url}), or use the offline default "
            "`--data.corpus=python_docs`."
        )
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (http(s) or a file:// mirror)
            data = response.read()
    except OSError as err:
        raise RuntimeError(f"TextDataModule: downloading tiny_shakespeare from {url} failed: {err}") from err
    if len(data) != TINY_SHAKESPEARE_BYTES:
        raise RuntimeError(
            f"TextDataModule: the tiny_shakespeare download from {url} has {len(data):,} bytes, expected "
            f"{TINY_SHAKESPEARE_BYTES:,}; it was not saved. Check the URL or the network."
        )
    _write_atomically(target, data)
    return target


def _write_atomically(target: Path, data: bytes) -> None:
    # several workers may build the same file at once: each writes its own temporary file, then renames it
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, prefix=f".{target.name}.") as tmp:
        tmp.write(data)
    os.replace(tmp.name, target)

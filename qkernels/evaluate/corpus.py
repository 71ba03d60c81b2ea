"""Real English sentences that every Python installation has: its standard library's docstrings.

The sentences are the prose of the docstrings of these pure-Python standard-library modules and
of their public functions, classes and methods, split into sentences and filtered to plain text
(no code, no markup). Which sentences exist depends slightly on the Python version; the order is
fixed (by a hash of each sentence), so one version always gives the same list.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import re
import sys
import warnings

from ..errors import InvalidArgumentError

MODULES = (
    "argparse", "asyncio", "bisect", "calendar", "collections", "concurrent.futures", "configparser", "contextlib",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "fractions", "ftplib",
    "functools", "gettext", "heapq", "http.client", "http.server", "imaplib", "inspect", "ipaddress", "json",
    "logging", "mailbox", "optparse", "os", "pathlib", "pdb", "pickle", "pydoc", "random", "sched", "selectors",
    "shelve", "shutil", "smtplib", "socket", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "tokenize", "trace", "typing", "unittest", "urllib.parse", "urllib.request", "uuid",
    "wave", "xml.dom.minidom", "zipfile",
)
SOURCE = f"docstrings of {len(MODULES)} Python {sys.version_info[0]}.{sys.version_info[1]} standard-library modules"

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PLAIN = re.compile(r"[A-Z][A-Za-z0-9 ,;:'()\-]+[.!?]")


def _docstrings():
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        yield inspect.getdoc(module)
        for name, member in sorted(vars(module).items()):
            if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
                continue
            yield inspect.getdoc(member)
            if inspect.isclass(member):
                for attribute, method in sorted(vars(member).items()):
                    if not attribute.startswith("_") and callable(method):
                        yield inspect.getdoc(method)


def _sentences(doc: str):
    for paragraph in doc.split("\n\n"):
        text = " ".join(paragraph.split())
        for sentence in _SPLIT.split(text):
            words = len(sentence.split())
            if 6 <= words <= 40 and _PLAIN.fullmatch(sentence):
                yield sentence


def sentences(count: int, offset: int = 0) -> list[str]:
    """`count` distinct sentences, from position `offset` of the fixed order (so that disjoint
    ranges give, say, evaluation and calibration sets)."""
    ordered = _ordered()
    if offset + count > len(ordered):
        raise InvalidArgumentError(f"only {len(ordered)} sentences are available; asked for {offset + count}")
    return list(ordered[offset : offset + count])


def sentence_count() -> int:
    """How many sentences this Python version's standard library gives."""
    return len(_ordered())


@functools.cache
def _ordered() -> tuple[str, ...]:
    if sys.flags.optimize >= 2:
        raise InvalidArgumentError("Python runs with -OO: the standard library has no docstrings to read")
    with warnings.catch_warnings():  # reading deprecated aliases (typing.io, typing.re) warns
        warnings.simplefilter("ignore", DeprecationWarning)
        unique = {s for doc in _docstrings() if doc for s in _sentences(doc)}
    return tuple(sorted(unique, key=lambda s: hashlib.sha256(s.encode()).hexdigest()))


def python_source(modules: tuple[str, ...]) -> str:
    """The source code of standard-library modules (code with its comments and docstrings), joined
    by blank lines: text of another kind than the sentences, for held-out evaluation or calibration."""
    return "\n\n".join(inspect.getsource(importlib.import_module(name)) for name in modules)

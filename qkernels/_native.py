"""Loads libqkernels through cffi in ABI mode, declaring exactly what the public header declares.

The header's region between the QK_CDEF markers is plain C written for cffi's parser, so the
Python layer and the C ABI cannot drift apart. Set QKERNELS_LIBRARY to use a library built
elsewhere (for example by ``cmake --build build``); its header is looked up beside it, then in
this source tree's native/include.
"""

from __future__ import annotations

import os
from pathlib import Path

import cffi

from .errors import error_for_status

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_HEADER = _PACKAGE_DIR.parent / "native" / "include" / "qkernels.h"


def _find_library() -> Path:
    override = os.environ.get("QKERNELS_LIBRARY")
    if override:
        path = Path(override)
        if not path.is_file():
            raise ImportError(f"QKERNELS_LIBRARY={override!r} is not a file")
        return path.resolve()
    found = sorted(_PACKAGE_DIR.glob("libqkernels.so*")) + sorted(_PACKAGE_DIR.glob("libqkernels*.dylib"))
    if not found:
        raise ImportError(
            f"libqkernels is not installed beside {_PACKAGE_DIR}: install the package with "
            "`pip install .`, or build it with CMake and set QKERNELS_LIBRARY to the built library"
        )
    return found[0]


def _find_header(library: Path) -> Path:
    for candidate in (library.parent / "qkernels.h", _PACKAGE_DIR / "qkernels.h", _SOURCE_HEADER):
        if candidate.is_file():
            return candidate
    raise ImportError(f"qkernels.h is not beside {library} nor in {_SOURCE_HEADER.parent}")


def _cdef_of(header: Path) -> str:
    text = header.read_text()
    begin, end = "/* QK_CDEF_BEGIN */", "/* QK_CDEF_END */"
    return text[text.index(begin) + len(begin) : text.index(end)]


library_path = _find_library()
ffi = cffi.FFI()
ffi.cdef(_cdef_of(_find_header(library_path)))
lib = ffi.dlopen(str(library_path))

if lib.qk_abi_version() != lib.QK_ABI_VERSION:
    raise ImportError(f"{library_path} has ABI {lib.qk_abi_version()}, its header {lib.QK_ABI_VERSION}")

_STATUS_NAMES = {
    getattr(lib, name): name for name in dir(lib) if name.startswith("QK_ERR_") and name != "QK_ERR_STATUS_COUNT"
}


def check(status: int) -> None:
    """Raises the typed exception for a failed qk_ call, with the library's message."""
    if status != lib.QK_OK:
        message = ffi.string(lib.qk_last_error()).decode() or ffi.string(lib.qk_status_string(status)).decode()
        raise error_for_status(_STATUS_NAMES.get(status, "QK_ERR"), message)


def text(c_string) -> str:
    return ffi.string(c_string).decode() if c_string != ffi.NULL else ""

"""Loads libqkernels through cffi in ABI mode, declaring exactly what the public header declares.

The header's region between the QK_CDEF markers is plain C written for cffi's parser, so the
Python layer and the C ABI cannot drift apart. An installed package (also an editable one, whose
compiled files live in site-packages) has the library and the header side by side. Set
QKERNELS_LIBRARY to use a library built elsewhere; its header is then looked up beside it (a CMake
build directory has a copy), in ../include (an install prefix), or in this source tree's
native/include, never in an installed package, which may come from another build.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import cffi

from .errors import error_for_status

# Every directory of the package: an editable install adds site-packages/qkernels to the source one.
_PACKAGE_DIRS = [Path(p) for p in sys.modules[__package__].__path__]
_SOURCE_HEADER = Path(__file__).resolve().parent.parent / "native" / "include" / "qkernels.h"


def _find_library_and_header() -> tuple[Path, Path]:
    override = os.environ.get("QKERNELS_LIBRARY")
    if override:
        library = Path(override).resolve()
        if not library.is_file():
            raise ImportError(f"QKERNELS_LIBRARY={override!r} is not a file")
        for header in (library.parent / "qkernels.h", library.parent.parent / "include" / "qkernels.h", _SOURCE_HEADER):
            if header.is_file():
                return library, header
        raise ImportError(f"qkernels.h is neither beside {library}, nor in ../include, nor in {_SOURCE_HEADER.parent}")
    for directory in _PACKAGE_DIRS:
        found = sorted(directory.glob("libqkernels.so*")) + sorted(directory.glob("libqkernels*.dylib"))
        if found and (directory / "qkernels.h").is_file():
            return found[0], directory / "qkernels.h"
    if _SOURCE_HEADER.is_file():  # this is a checkout's qkernels/, found first on sys.path (the current directory?)
        raise ImportError(
            f"qkernels was imported from the source tree {_SOURCE_HEADER.parents[2]}, which has no built library: "
            "run from another directory to use the installed package, or build with CMake and set "
            "QKERNELS_LIBRARY to the built library"
        )
    raise ImportError(
        f"libqkernels is not installed in {', '.join(map(str, _PACKAGE_DIRS))}: install the package with "
        "`pip install .`, or build it with CMake and set QKERNELS_LIBRARY to the built library"
    )


def _cdef_of(header: Path) -> str:
    text = header.read_text()
    begin, end = "/* QK_CDEF_BEGIN */", "/* QK_CDEF_END */"
    return text[text.index(begin) + len(begin) : text.index(end)]


library_path, header_path = _find_library_and_header()
ffi = cffi.FFI()
ffi.cdef(_cdef_of(header_path))
lib = ffi.dlopen(str(library_path))

if lib.qk_abi_version() != lib.QK_ABI_VERSION:
    raise ImportError(f"{library_path} has ABI {lib.qk_abi_version()}, its header {lib.QK_ABI_VERSION}")

# cffi types resolved once: a cast or new naming its type in a string looks it up on every call.
VOID_POINTER, FLOAT_POINTER = ffi.typeof("void *"), ffi.typeof("float *")
FLOAT_ARRAY, INT8_ARRAY = ffi.typeof("float[]"), ffi.typeof("int8_t[]")

_STATUS_NAMES = {
    getattr(lib, name): name for name in dir(lib) if name.startswith("QK_ERR_") and name != "QK_ERR_STATUS_COUNT"
}


def check(status: int) -> None:
    """Raises the typed exception for a failed qk_ call, with the library's message."""
    if status != lib.QK_OK:
        message = ffi.string(lib.qk_last_error()).decode() or ffi.string(lib.qk_status_string(status)).decode()
        raise error_for_status(_STATUS_NAMES.get(status, "QK_ERR"), message)


@functools.cache
def _struct_type(name: str):
    return ffi.typeof(f"{name} *"), ffi.sizeof(name)


def new_struct(name: str):
    """A zeroed ``name *`` whose leading ``size`` field says how large this header's struct is."""
    pointer_type, size = _struct_type(name)
    struct = ffi.new(pointer_type)
    struct.size = size
    return struct


def text(c_string) -> str:
    return ffi.string(c_string).decode() if c_string != ffi.NULL else ""

"""Which backend runs a call: compiled ∧ detected, best first, overridable by the user.

Precedence, highest first:
  1. ``backend=`` / ``kernel=`` arguments of a call;
  2. the innermost ``with qkernels.use_backend(name):`` block (per thread and per asyncio task);
  3. the ``QKERNELS_BACKEND`` environment variable (read by the C library on every call);
  4. the best available backend for the problem (the registry's order).
Device backends (cuda) take device arrays: a call on device arrays runs the best available device
backend unless 1 or 2 names one (QKERNELS_BACKEND does not apply to it), and automatic dispatch of a
call on host arrays never picks one. Naming a backend for arrays it cannot reach (a CPU backend for
device arrays, or a device backend for host arrays) raises InvalidArgumentError.
A forced backend or kernel that cannot run raises BackendUnavailableError or UnsupportedError with
the reason; nothing ever falls back silently from a forced choice.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

from .. import _checks
from .._native import check, ffi, lib, new_struct, text
from ..errors import InvalidArgumentError

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("qkernels_backend", default=None)


@dataclass(frozen=True)
class BackendInfo:
    name: str
    code: int  # the id the library assigned when the backend registered; 0 for one not built
    compiled: bool  # registered: built in, or from a backend library (backends(not_built=True) adds the others)
    detected: bool  # the machine has what it needs (False, unchecked, for one not built)
    available: bool
    own_layout: bool  # packs weights into its own layout (else runs on the canonical arrays)
    reason: str  # why not available ("not built: ..." for one not built); "" when available
    library: str  # the backend library it came from; "" when built in
    priority: int  # automatic dispatch tries higher first
    device: bool  # runs on a device (cuda): takes device arrays, and automatic dispatch never picks it


@dataclass(frozen=True)
class KernelInfo:
    name: str
    backend: str
    mode: str  # "a16" or "a8"
    bits: tuple[int, ...]
    dtypes: tuple[str, ...]
    group_multiple: int
    max_group_size: int  # longest group it runs exactly (min(group_size, K) elements); 0: any
    max_m: int  # preferred for M <= max_m; 0: any M
    available: bool
    offsets: bool  # runs weights with per-group offsets (format v2)
    ragged_groups: bool  # runs weights whose last group is shorter (format v2)
    canonical: bool  # reads the canonical layout (runs without packing)
    cpu_features: tuple[str, ...]  # CPU features it needs beyond its backend's (available: the CPU has them)

    def runs(self, mode: str, bits: int, group_size: int, K: int, dtype: str) -> bool:
        """Whether it runs this mode, weight width, group size (against K) and input dtype; the format
        v2 features (offsets, a shorter last group) are the caller's to check."""
        return (self.mode == mode and bits in self.bits and dtype in self.dtypes and group_size % self.group_multiple == 0
                and (self.max_group_size == 0 or min(group_size, K) <= self.max_group_size))


MODES = {"a16": lib.QK_MODE_A16, "a8": lib.QK_MODE_A8}
_MODE_NAMES = {code: name for name, code in MODES.items()}
_DTYPE_NAMES = {lib.QK_DTYPE_F32: "float32", lib.QK_DTYPE_F16: "float16", lib.QK_DTYPE_BF16: "bfloat16"}


def backends(not_built: bool = False) -> list[BackendInfo]:
    """Every registered backend, in dispatch order (best first), with whether it can run here and why not.

    not_built: then also qkernels's own backends that this library lacks (another architecture's,
    left out of this build, or cuda without its library), after the registered ones, with
    compiled=False and the reason ("not built: aarch64 builds only"). Their names, and why each is
    missing, come from the C library (qk_project_backend), which refuses forcing them by the same
    list: it is the one list of the project's backends."""
    result = []
    for code in range(1, lib.qk_backend_count() + 1):
        info = new_struct("qk_backend_info")
        check(lib.qk_backend_get(code, info))
        result.append(
            BackendInfo(
                text(info.name), code, bool(info.compiled), bool(info.detected), bool(info.available),
                bool(info.own_layout), text(info.reason), text(info.library), info.priority, bool(info.device),
            )
        )
    result.sort(key=lambda b: -b.priority)  # stable: ties keep registration order
    reason = ffi.new("const char**")
    index = 0
    while not_built and (name := lib.qk_project_backend(index, reason)) != ffi.NULL:
        if reason[0] != ffi.NULL:
            result.append(BackendInfo(text(name), 0, False, False, False, False, text(reason[0]), "", 0, False))
        index += 1
    return result


def _codes() -> dict[str, int]:
    """Backend name -> id. Ids never change, but a program may register more backends at any time."""
    global _codes_cache
    if len(_codes_cache) != lib.qk_backend_count() + 1:
        _codes_cache = {"auto": lib.QK_BACKEND_AUTO} | {b.name: b.code for b in backends()}
    return _codes_cache


_codes_cache: dict[str, int] = {}


def backend_code(name: str) -> int:
    """The backend id of a backend name ("auto" is 0)."""
    try:
        return _codes()[name]
    except KeyError:
        pass
    # One of qkernels's own backends that this library lacks is BackendUnavailableError (the C
    # library knows their names); any other name, InvalidArgumentError.
    if isinstance(name, str) and lib.qk_backend_find(name.encode(), ffi.new("qk_backend*")) == lib.QK_ERR_BACKEND_UNAVAILABLE:
        check(lib.QK_ERR_BACKEND_UNAVAILABLE)
    raise InvalidArgumentError(f"backend={name!r} is not one of: {', '.join(_codes())}")


def device_backends() -> list[BackendInfo]:
    """The registered backends that run on a device (take device arrays), best first."""
    return [b for b in backends() if b.device]


def backend_name(code: int) -> str:
    return next(name for name, c in _codes().items() if c == code)


def kernel_info_from_c(info) -> KernelInfo:
    return KernelInfo(
        name=text(info.name),
        backend=backend_name(info.backend),
        mode=_MODE_NAMES[info.mode],
        bits=tuple(b for b in (4, 8) if info.bits_mask & (1 << b)),
        dtypes=tuple(name for code, name in _DTYPE_NAMES.items() if info.dtype_mask & (1 << code)),
        group_multiple=info.group_multiple,
        max_group_size=info.max_group_size,
        max_m=info.max_m,
        available=bool(info.available),
        offsets=bool(info.format_flags & lib.QK_FORMAT_OFFSETS),
        ragged_groups=bool(info.format_flags & lib.QK_FORMAT_RAGGED_GROUPS),
        canonical=bool(info.canonical),
        cpu_features=tuple(
            text(lib.qk_cpu_feature_name(f)) for f in range(lib.QK_CPU_FEATURE_COUNT) if info.required_cpu >> f & 1
        ),
    )


def kernels() -> list[KernelInfo]:
    """Every registered kernel, in dispatch order: the registry that tests and benchmarks read."""
    result = []
    for index in range(lib.qk_kernel_count()):
        info = new_struct("qk_kernel_info")
        check(lib.qk_kernel_get(index, info))
        result.append(kernel_info_from_c(info))
    return result


def cpu_features() -> list[str]:
    """Names of the CPU features detected (and enabled by the operating system)."""
    return [text(lib.qk_cpu_feature_name(f)) for f in range(lib.QK_CPU_FEATURE_COUNT) if lib.qk_cpu_has(f)]


def set_num_threads(threads: int) -> None:
    """Threads for the multithreaded CPU kernels, process-wide; 0 restores the default
    (``QKERNELS_NUM_THREADS`` if set, else the CPUs this process may run on)."""
    check(lib.qk_set_num_threads(_checks.integer(threads, "threads")))  # beyond int32: typed, not OverflowError


def get_num_threads() -> int:
    """Threads the CPU kernels use."""
    return lib.qk_get_num_threads()


@contextlib.contextmanager
def use_backend(name: str):
    """Forces `name` for qkernels calls inside the block (``"auto"`` restores automatic choice)."""
    backend_code(name)  # reject unknown names at the `with`, not at the first call
    token = _forced.set(None if name == "auto" else name)
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend() -> str | None:
    """The backend forced by the innermost use_backend block, if any."""
    return _forced.get()


__all__ = [
    "BackendInfo",
    "KernelInfo",
    "backend_code",
    "backend_name",
    "backends",
    "cpu_features",
    "device_backends",
    "forced_backend",
    "get_num_threads",
    "kernels",
    "set_num_threads",
    "use_backend",
]

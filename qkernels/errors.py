"""Typed exceptions for every qk_status code. Each message names the offending argument."""

from __future__ import annotations


class QKernelsError(Exception):
    """Base class: every error qkernels raises. ``status`` is the C status name."""

    status = "QK_ERR"


class InvalidArgumentError(QKernelsError, ValueError):
    """A size, group size, bit width, pointer, alignment or enum value is not allowed."""


class DtypeError(QKernelsError, TypeError):
    """An array or tensor has a dtype this operation does not accept."""


class NonFiniteError(QKernelsError, ValueError):
    """NaN or Inf where a finite value is required (quantizer input)."""


class BackendUnavailableError(QKernelsError, RuntimeError):
    """A forced backend or kernel is not compiled in or not supported by this machine."""


class UnsupportedError(QKernelsError, RuntimeError):
    """The chosen backend or kernel cannot run this problem (mode, dtype, bits, group size)."""


class OutOfMemoryError(QKernelsError, MemoryError):
    """A native allocation failed."""


_BY_STATUS = {
    "QK_ERR_NULL_POINTER": InvalidArgumentError,
    "QK_ERR_INVALID_SIZE": InvalidArgumentError,
    "QK_ERR_INVALID_GROUP": InvalidArgumentError,
    "QK_ERR_ODD_K": InvalidArgumentError,
    "QK_ERR_INVALID_BITS": InvalidArgumentError,
    "QK_ERR_INVALID_DTYPE": DtypeError,
    "QK_ERR_INVALID_ARGUMENT": InvalidArgumentError,
    "QK_ERR_BACKEND_UNAVAILABLE": BackendUnavailableError,
    "QK_ERR_UNSUPPORTED": UnsupportedError,
    "QK_ERR_MISALIGNED": InvalidArgumentError,
    "QK_ERR_BUFFER_TOO_SMALL": InvalidArgumentError,
    "QK_ERR_NON_FINITE": NonFiniteError,
    "QK_ERR_OUT_OF_MEMORY": OutOfMemoryError,
}


def error_for_status(status: str, message: str) -> QKernelsError:
    """The exception for a C status name, carrying that name in ``.status``."""
    error = _BY_STATUS.get(status, QKernelsError)(message)
    error.status = status
    return error

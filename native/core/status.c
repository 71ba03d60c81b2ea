/* Status codes, their messages, and the thread-local last error. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local qk_status last_status = QK_OK;
static _Thread_local char last_message[QK_ERROR_BYTES];

static const char* const status_strings[QK_ERR_STATUS_COUNT] = {
    [QK_OK] = "success",
    [QK_ERR_NULL_POINTER] = "a required pointer is NULL",
    [QK_ERR_INVALID_SIZE] = "a matrix dimension is out of range",
    [QK_ERR_INVALID_GROUP] = "group size is not a positive divisor of K",
    [QK_ERR_ODD_K] = "4-bit weights need an even K",
    [QK_ERR_INVALID_BITS] = "bits must be 4 or 8",
    [QK_ERR_INVALID_DTYPE] = "unsupported dtype",
    [QK_ERR_INVALID_ARGUMENT] = "invalid argument",
    [QK_ERR_BACKEND_UNAVAILABLE] = "the requested backend or kernel is not available",
    [QK_ERR_UNSUPPORTED] = "the backend or kernel does not support this problem",
    [QK_ERR_MISALIGNED] = "a buffer is not aligned to its element size",
    [QK_ERR_BUFFER_TOO_SMALL] = "a buffer is too small",
    [QK_ERR_NON_FINITE] = "non-finite value where a finite one is required",
    [QK_ERR_OUT_OF_MEMORY] = "out of memory",
};

const char* qk_status_string(qk_status status) {
    if ((int)status < 0 || status >= QK_ERR_STATUS_COUNT) return "unknown status";
    return status_strings[status];
}

qk_status qk_last_status(void) { return last_status; }

const char* qk_last_error(void) { return last_message; }

qk_status qk_succeed(void) {
    last_status = QK_OK;
    last_message[0] = '\0';
    return QK_OK;
}

void qk_save_status(qk_saved_status* saved) {
    saved->status = last_status;
    memcpy(saved->message, last_message, sizeof last_message);
}

void qk_restore_status(const qk_saved_status* saved) {
    last_status = saved->status;
    memcpy(last_message, saved->message, sizeof last_message);
}

qk_status qk_fail(qk_status status, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    last_status = status;
    return status;
}

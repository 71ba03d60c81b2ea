/*
 * The warp emulator (native/cuda/emu/warp_emulator.h) and the host side of ptx.cuh, compiled as
 * host C++ with QK_CUDA_EMULATE. Every expected lane -> (row, col) mapping below is written from
 * the PTX ISA's fragment tables in its own words (element index i of a lane's fragment), not from
 * ptx.cuh. Error paths (deadlock, divergent collectives, shared-memory overrun) run in a forked
 * child that must abort with the emulator's message.
 */
#include "ptx.cuh"

#include <math.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <string>
#include <utility>

static int failures = 0;
#define CHECK(condition, ...)                                 \
  do {                                                        \
    if (!(condition)) {                                       \
      ++failures;                                             \
      fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #condition); \
      fprintf(stderr, __VA_ARGS__);                           \
      fprintf(stderr, "\n");                                  \
    }                                                         \
  } while (0)

static std::mt19937 rng(17);

/* ---- fragment layouts from the PTX ISA ----------------------------------------------------- */

/* m16n8k16 (.f16/.bf16): element i (0..7) of a lane's A fragment, i / 2 = register. */
static int a16_row(int lane, int i) { return lane / 4 + ((i < 2 || (i >= 4 && i < 6)) ? 0 : 8); }
static int a16_col(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0); }
/* B fragment, i in 0..3. */
static int b16_row(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0); }
static int b16_col(int lane, int) { return lane / 4; }
/* C/D fragment (also for m16n8k32 .s32), i in 0..3. */
static int c_row(int lane, int i) { return lane / 4 + (i >= 2 ? 8 : 0); }
static int c_col(int lane, int i) { return (lane % 4) * 2 + (i & 1); }
/* m16n8k32 (.s8): A element i in 0..15 (i / 4 = register), B element i in 0..7. */
static int a32_row(int lane, int i) { return lane / 4 + ((i < 4 || (i >= 8 && i < 12)) ? 0 : 8); }
static int a32_col(int lane, int i) { return (lane % 4) * 4 + (i & 3) + (i >= 8 ? 16 : 0); }
static int b32_row(int lane, int i) { return (lane % 4) * 4 + (i & 3) + (i >= 4 ? 16 : 0); }
static int b32_col(int lane, int) { return lane / 4; }

static uint16_t f16_bits(float x) { return __half_as_ushort(__float2half_rn(x)); }
static uint16_t bf16_bits(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }

/* ---- kernels ------------------------------------------------------------------------------- */

struct MmaFragments {
  uint32_t a[32][4];
  uint32_t b[32][2];
  float c[32][4];
  float d[32][4];
  int32_t ci[32][4];
  int32_t di[32][4];
};

__global__ void mma_kernel(MmaFragments* f, int which) {
  const int lane = threadIdx.x;
  float d[4];
  int32_t di[4];
  if (which == 0) {
    qk_mma_m16n8k16_f16(d, f->a[lane], f->b[lane], f->c[lane]);
  } else if (which == 1) {
    qk_mma_m16n8k16_bf16(d, f->a[lane], f->b[lane], f->c[lane]);
  } else {
    qk_mma_m16n8k32_s8(di, f->a[lane], f->b[lane], f->ci[lane]);
  }
  for (int i = 0; i < 4; ++i) {
    if (which < 2) f->d[lane][i] = d[i];
    else f->di[lane][i] = di[i];
  }
}

static void test_mma_float(int which) {
  /* Small integers: every product and sum is exact in float32, so the result is exact. */
  std::uniform_int_distribution<int> value(-8, 8);
  float A[16][16], B[16][8], C[16][8];
  for (auto& row : A) for (float& x : row) x = (float)value(rng);
  for (auto& row : B) for (float& x : row) x = (float)value(rng);
  for (auto& row : C) for (float& x : row) x = (float)value(rng) * 16;
  auto bits = [&](float x) { return which == 0 ? f16_bits(x) : bf16_bits(x); };
  MmaFragments f{};
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      f.a[lane][i / 2] |= (uint32_t)bits(A[a16_row(lane, i)][a16_col(lane, i)]) << (16 * (i % 2));
    }
    for (int i = 0; i < 4; ++i) {
      f.b[lane][i / 2] |= (uint32_t)bits(B[b16_row(lane, i)][b16_col(lane, i)]) << (16 * (i % 2));
      f.c[lane][i] = C[c_row(lane, i)][c_col(lane, i)];
      f.d[lane][i] = NAN;
    }
  }
  QK_CUDA_LAUNCH(mma_kernel, 1, 32, 0, nullptr, &f, which);
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const int row = c_row(lane, i), col = c_col(lane, i);
      float expected = C[row][col];
      for (int k = 0; k < 16; ++k) expected += A[row][k] * B[k][col];
      CHECK(f.d[lane][i] == expected, "%s lane %d d[%d]: %g, expected %g",
            which == 0 ? "f16" : "bf16", lane, i, f.d[lane][i], expected);
    }
  }
}

static void test_mma_s8() {
  std::uniform_int_distribution<int> value(-128, 127);
  int8_t A[16][32], B[32][8];
  int32_t C[16][8];
  for (auto& row : A) for (int8_t& x : row) x = (int8_t)value(rng);
  for (auto& row : B) for (int8_t& x : row) x = (int8_t)value(rng);
  /* Accumulators near the int32 limits: the sums must wrap modulo 2^32. */
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 8; ++c) C[r][c] = (r + c) % 2 ? INT32_MAX - 100 : INT32_MIN + 100;
  }
  MmaFragments f{};
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 16; ++i) {
      f.a[lane][i / 4] |= (uint32_t)(uint8_t)A[a32_row(lane, i)][a32_col(lane, i)] << (8 * (i % 4));
    }
    for (int i = 0; i < 8; ++i) {
      f.b[lane][i / 4] |= (uint32_t)(uint8_t)B[b32_row(lane, i)][b32_col(lane, i)] << (8 * (i % 4));
    }
    for (int i = 0; i < 4; ++i) f.ci[lane][i] = C[c_row(lane, i)][c_col(lane, i)];
  }
  QK_CUDA_LAUNCH(mma_kernel, 1, 32, 0, nullptr, &f, 2);
  int wrapped = 0;
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const int row = c_row(lane, i), col = c_col(lane, i);
      int64_t exact = C[row][col];
      for (int k = 0; k < 32; ++k) exact += (int64_t)A[row][k] * B[k][col];
      const int32_t expected = (int32_t)(uint32_t)(uint64_t)exact;
      wrapped += exact != expected;
      CHECK(f.di[lane][i] == expected, "s8 lane %d d[%d]: %d, expected %d", lane, i,
            f.di[lane][i], expected);
    }
  }
  CHECK(wrapped > 0, "no accumulator wrapped: the test does not cover wrapping");
}

/* Four 8x8 matrices of 16-bit elements, their rows scattered over shared memory (row r of
 * matrix j at slot slot_of[8j + r]); element (j, r, c) holds 0x1000 j + 0x100 r + c. */
struct LdmatrixResult {
  uint32_t r[32][4];
};

__global__ void ldmatrix_kernel(LdmatrixResult* out, const int* slot_of, int variant) {
  __shared__ __align__(16) uint16_t rows[32][8];
  const int lane = threadIdx.x;
  for (int c = 0; c < 8; ++c) {
    rows[slot_of[lane]][c] = (uint16_t)(0x1000 * (lane / 8) + 0x100 * (lane % 8) + c);
  }
  __syncwarp();
  uint32_t r[4] = {0xDEADBEEF, 0xDEADBEEF, 0xDEADBEEF, 0xDEADBEEF};
  const void* my_row = rows[slot_of[lane]];
  switch (variant) {
    case 0: qk_ldmatrix_x1(r, my_row); break;
    case 1: qk_ldmatrix_x2(r, my_row); break;
    case 2: qk_ldmatrix_x4(r, my_row); break;
    case 3: qk_ldmatrix_x2_trans(r, my_row); break;
    case 4: qk_ldmatrix_x4_trans(r, my_row); break;
  }
  for (int j = 0; j < 4; ++j) out->r[lane][j] = r[j];
}

static void test_ldmatrix() {
  int slot_of[32];
  for (int i = 0; i < 32; ++i) slot_of[i] = i;
  std::shuffle(slot_of, slot_of + 32, rng);
  const struct { int matrices; bool trans; } variants[] = {{1, false}, {2, false}, {4, false},
                                                           {2, true}, {4, true}};
  for (int v = 0; v < 5; ++v) {
    LdmatrixResult out;
    QK_CUDA_LAUNCH(ldmatrix_kernel, 1, 32, 0, nullptr, &out, slot_of, v);
    for (int lane = 0; lane < 32; ++lane) {
      for (int j = 0; j < 4; ++j) {
        uint32_t expected = 0xDEADBEEF; /* registers beyond .num are not written */
        if (j < variants[v].matrices) {
          /* PTX ISA: lane holds row lane/4, elements 2(lane%4) and 2(lane%4)+1 of matrix j; with
           * .trans, the matrix is transposed first. */
          expected = 0;
          for (int e = 0; e < 2; ++e) {
            int row = lane / 4, col = (lane % 4) * 2 + e;
            if (variants[v].trans) std::swap(row, col);
            expected |= (uint32_t)(0x1000 * j + 0x100 * row + col) << (16 * e);
          }
        }
        CHECK(out.r[lane][j] == expected, "ldmatrix variant %d lane %d r[%d]: %08x, expected %08x",
              v, lane, j, out.r[lane][j], expected);
      }
    }
  }
}

/* ---- lop3, prmt ---------------------------------------------------------------------------- */

template <uint32_t LUT>
static void check_lop3(uint32_t a, uint32_t b, uint32_t c) {
  const uint32_t d = qk_lop3<LUT>(a, b, c);
  for (int bit = 0; bit < 32; ++bit) {
    /* The ISA's table: LUT = F(0xF0, 0xCC, 0xAA), so the row for inputs (a, b, c) is the bit
     * where 0xF0, 0xCC, 0xAA have those values. */
    const int ta = a >> bit & 1, tb = b >> bit & 1, tc = c >> bit & 1;
    int row = -1;
    for (int r = 0; r < 8; ++r) {
      if ((0xF0 >> r & 1) == ta && (0xCC >> r & 1) == tb && (0xAA >> r & 1) == tc) row = r;
    }
    const uint32_t expected = LUT >> row & 1;
    if ((d >> bit & 1) != expected) {
      CHECK(false, "lop3 0x%02x bit %d of (%08x, %08x, %08x)", LUT, bit, a, b, c);
      return;
    }
  }
}

template <uint32_t... LUTS>
static void check_every_lop3(std::integer_sequence<uint32_t, LUTS...>, uint32_t a, uint32_t b,
                             uint32_t c) {
  (check_lop3<LUTS>(a, b, c), ...);
}

static void test_lop3() {
  for (int trial = 0; trial < 8; ++trial) {
    check_every_lop3(std::make_integer_sequence<uint32_t, 256>(), rng(), rng(), rng());
  }
  /* Named functions, as kernels write them. */
  const uint32_t a = 0x12345678, b = 0x0F0F0F0F, c = 0x64006400;
  CHECK(qk_lop3<(0xF0 & 0xCC) | 0xAA>(a, b, c) == ((a & b) | c), "(a & b) | c");
  CHECK(qk_lop3<0xF0 ^ 0xCC ^ 0xAA>(a, b, c) == (a ^ b ^ c), "a ^ b ^ c");
  CHECK(qk_lop3<0xF0>(a, b, c) == a && qk_lop3<0x00>(a, b, c) == 0, "a, 0");
}

static void test_prmt() {
  const uint32_t a = 0x33221100, b = 0x77665544;
  CHECK(qk_prmt(a, b, 0x3210) == a, "identity");
  CHECK(qk_prmt(a, b, 0x7654) == b, "b");
  CHECK(qk_prmt(a, b, 0x5410) == 0x55441100, "low halves: %08x", qk_prmt(a, b, 0x5410));
  CHECK(qk_prmt(a, b, 0x7632) == 0x77663322, "high halves: %08x", qk_prmt(a, b, 0x7632));
  CHECK(qk_prmt(a, b, 0x0123) == 0x00112233, "byte reverse: %08x", qk_prmt(a, b, 0x0123));
  CHECK(qk_prmt(a, b, 0x4444) == 0x44444444, "broadcast: %08x", qk_prmt(a, b, 0x4444));
  /* Bit 3 of a nibble: the selected byte's sign bit over the whole byte. */
  CHECK(qk_prmt(0x000000F0, 0, 0x0008) == 0xF0F0F0FF, "sign of 0xF0: %08x",
        qk_prmt(0x000000F0, 0, 0x0008));
  CHECK(qk_prmt(0x00007F00, 0x80000000, 0xF9C1) == 0xFF00007F,
        "mixed signs: %08x", qk_prmt(0x00007F00, 0x80000000, 0xF9C1));
}

/* ---- shfl ---------------------------------------------------------------------------------- */

__global__ void shfl_kernel(uint32_t* u, float* f, int* i, int operand, int xor_mode) {
  const int lane = threadIdx.x % 32;
  const uint32_t mine = 1000 * (threadIdx.x / 32) + 7 * lane + 1;
  if (xor_mode) {
    u[threadIdx.x] = qk_shfl_xor(mine, operand);
    f[threadIdx.x] = qk_shfl_xor((float)mine + 0.5f, operand);
    i[threadIdx.x] = qk_shfl_xor(-(int)mine, operand);
  } else {
    u[threadIdx.x] = qk_shfl(mine, operand + lane % 3);
    f[threadIdx.x] = qk_shfl((float)mine + 0.5f, operand + lane % 3);
    i[threadIdx.x] = qk_shfl(-(int)mine, operand + lane % 3);
  }
}

static void test_shfl() {
  uint32_t u[64];
  float f[64];
  int i[64];
  for (int xor_mode = 0; xor_mode < 2; ++xor_mode) {
    for (int operand : {1, 2, 16, 31, 35}) {
      QK_CUDA_LAUNCH(shfl_kernel, 1, 64, 0, nullptr, u, f, i, operand, xor_mode);
      for (int t = 0; t < 64; ++t) {
        const int lane = t % 32;
        /* bfly: lane ^ operand, idx: operand mod 32 (the width is the whole warp). */
        const int source = xor_mode ? (lane ^ operand) % 32 : (operand + lane % 3) % 32;
        const uint32_t expected = 1000 * (t / 32) + 7 * source + 1;
        CHECK(u[t] == expected && f[t] == (float)expected + 0.5f && i[t] == -(int)expected,
              "shfl xor=%d operand %d thread %d: %u, expected %u", xor_mode, operand, t, u[t],
              expected);
      }
    }
  }
}

/* ---- cp.async ------------------------------------------------------------------------------ */

/* Thread t copies global row t to shared in group 0 and row t + 32 (first t % 17 bytes, rest
 * zero) in group 1, and records what its destinations hold at each step. */
struct CpAsyncSeen {
  uint8_t before_commit[32][16], after_commit[32][16], after_wait1[32][16][2], after_wait0[32][16][2];
  uint8_t neighbour[32][16];
};

__global__ void cp_async_kernel(const uint8_t* global, CpAsyncSeen* seen) {
  QK_DYNAMIC_SHARED(uint8_t, shared);
  const int t = threadIdx.x;
  uint8_t* first = shared + 16 * t;
  uint8_t* second = shared + 16 * (t + 32);
  qk_cp_async_16(first, global + 16 * t);
  qk_cp_async_commit();
  /* src_bytes 0 reads nothing: the source may be anywhere. */
  qk_cp_async_16_zfill(second, t % 17 ? global + 16 * (t + 32) : nullptr, t % 17);
  memcpy(seen->before_commit[t], second, 16);
  qk_cp_async_commit();
  memcpy(seen->after_commit[t], first, 16);
  qk_cp_async_wait<1>();
  for (int b = 0; b < 16; ++b) {
    seen->after_wait1[t][b][0] = first[b];
    seen->after_wait1[t][b][1] = second[b];
  }
  qk_cp_async_wait<0>();
  for (int b = 0; b < 16; ++b) {
    seen->after_wait0[t][b][0] = first[b];
    seen->after_wait0[t][b][1] = second[b];
  }
  __syncthreads();
  memcpy(seen->neighbour[t], shared + 16 * ((t + 1) % 32), 16);
}

static void test_cp_async() {
  alignas(16) uint8_t global[64 * 16];
  for (int i = 0; i < 64 * 16; ++i) global[i] = (uint8_t)(i * 13 + 1);
  CpAsyncSeen seen;
  QK_CUDA_LAUNCH(cp_async_kernel, 1, 32, 64 * 16, nullptr, global, &seen);
  for (int t = 0; t < 32; ++t) {
    for (int b = 0; b < 16; ++b) {
      const uint8_t g0 = global[16 * t + b];
      const uint8_t g1 = b < t % 17 ? global[16 * (t + 32) + b] : 0;
      CHECK(seen.before_commit[t][b] == 0xFF && seen.after_commit[t][b] == 0xFF,
            "thread %d byte %d landed before its wait", t, b);
      CHECK(seen.after_wait1[t][b][0] == g0, "wait_group 1 did not land the first group (t %d)", t);
      CHECK(seen.after_wait1[t][b][1] == 0xFF, "wait_group 1 landed the newest group (t %d)", t);
      CHECK(seen.after_wait0[t][b][0] == g0 && seen.after_wait0[t][b][1] == g1,
            "wait_group 0: thread %d byte %d: %02x %02x, expected %02x %02x", t, b,
            seen.after_wait0[t][b][0], seen.after_wait0[t][b][1], g0, g1);
      CHECK(seen.neighbour[t][b] == global[16 * ((t + 1) % 32) + b],
            "after the barrier thread %d sees its neighbour's copy", t);
    }
  }
}

/* ---- barriers, indices, shared memory ------------------------------------------------------ */

__global__ void barrier_kernel(int* out, int with_barrier) {
  QK_DYNAMIC_SHARED(int, shared);
  const int n = blockDim.x * blockDim.y * blockDim.z;
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  shared[t] = 1000 * block + t;
  if (with_barrier) __syncthreads();
  out[block * n + t] = shared[(t + 1) % n];
}

static void test_barrier() {
  const dim3 grid(2, 3, 1), block(8, 4, 2);
  const int n = 64, blocks = 6;
  int out[blocks * n];
  QK_CUDA_LAUNCH(barrier_kernel, grid, block, n * sizeof(int), nullptr, out, 1);
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < n; ++t) {
      CHECK(out[b * n + t] == 1000 * b + (t + 1) % n, "block %d thread %d: %d", b, t, out[b * n + t]);
    }
  }
  /* Without the barrier, thread 0 runs to its end before thread 1 writes: it reads the poison.
   * (The last thread reads thread 0's write, which did happen.) */
  QK_CUDA_LAUNCH(barrier_kernel, grid, block, n * sizeof(int), nullptr, out, 0);
  CHECK(out[0] == -1, "a missing barrier is not visible: thread 0 read %d", out[0]);
}

template <int Scale>
__global__ void scaled_index_kernel(int* out, int offset) {
  offset += 1; /* each thread's own copy of its parameters */
  out[threadIdx.x] = Scale * (int)threadIdx.x + offset;
}

static void test_launch_arguments() {
  int out[32];
  int evaluations = 0;
  auto* kernel = scaled_index_kernel<3>;
  QK_CUDA_LAUNCH(kernel, 1, 32, 0, nullptr, (++evaluations, out), 10);
  CHECK(evaluations == 1, "the launch evaluated its arguments %d times", evaluations);
  for (int t = 0; t < 32; ++t) CHECK(out[t] == 3 * t + 11, "thread %d: %d", t, out[t]);
}

/* ---- errors: each must abort the run with the emulator's message -------------------------- */

__global__ void early_return_kernel(int* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void divergent_kernel(int* out) {
  if (threadIdx.x % 32 == 3) {
    out[threadIdx.x] = qk_shfl_xor((int)threadIdx.x, 1);
  } else {
    out[threadIdx.x] = qk_shfl((int)threadIdx.x, 0);
  }
}

__global__ void mixed_mma_kernel(MmaFragments* f) {
  float d[4];
  if (threadIdx.x == 7) qk_mma_m16n8k16_bf16(d, f->a[0], f->b[0], f->c[0]);
  else qk_mma_m16n8k16_f16(d, f->a[0], f->b[0], f->c[0]);
}

__global__ void barrier_in_warp_branch_kernel(int* out) {
  if (threadIdx.x < 32) {
    out[threadIdx.x] = qk_shfl_xor((int)threadIdx.x, 1);
  } else {
    __syncthreads();
  }
}

__global__ void shared_overrun_kernel(int* out) {
  QK_DYNAMIC_SHARED(int, shared);
  shared[threadIdx.x + 1] = 0; /* thread 31 writes one int past the 32 */
  out[threadIdx.x] = 0;
}

__global__ void cp_async_overrun_kernel(const uint8_t* global) {
  QK_DYNAMIC_SHARED(uint8_t, shared);
  qk_cp_async_16(shared + 16 * (threadIdx.x + 1), global); /* thread 31: one row past the 512 bytes */
  qk_cp_async_commit();
  qk_cp_async_wait<0>();
}

__global__ void ldmatrix_overrun_kernel(uint32_t* out) {
  QK_DYNAMIC_SHARED(uint8_t, shared);
  qk_ldmatrix_x4(out + 4 * threadIdx.x, shared + 16 * (threadIdx.x + 1));
}

__global__ void partial_warp_kernel(int* out) { out[threadIdx.x] = qk_shfl_xor(1, 1); }

template <typename Launch>
static void expect_abort(const char* name, const char* message, Launch launch) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) abort();
  fflush(stdout);
  fflush(stderr);
  const pid_t child = fork();
  if (child == 0) {
    dup2(pipe_fds[1], 2);
    launch();
    _exit(0); /* no abort: the parent reports it */
  }
  close(pipe_fds[1]);
  std::string err;
  char buffer[512];
  ssize_t got;
  while ((got = read(pipe_fds[0], buffer, sizeof buffer)) > 0) err.append(buffer, (size_t)got);
  close(pipe_fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "%s: the run did not abort", name);
  CHECK(err.find(message) != std::string::npos, "%s: stderr lacks \"%s\": %s", name, message,
        err.c_str());
}

static void test_errors() {
  static int out[64];
  expect_abort("early return", "deadlock in block (0,0,0)", [] {
    QK_CUDA_LAUNCH(early_return_kernel, 1, 64, 0, nullptr, out);
  });
  expect_abort("divergent shuffles", "divergent warp collectives", [] {
    QK_CUDA_LAUNCH(divergent_kernel, 1, 64, 0, nullptr, out);
  });
  expect_abort("float16 and bfloat16 mma", "divergent warp collectives", [] {
    static MmaFragments f{};
    QK_CUDA_LAUNCH(mixed_mma_kernel, 1, 32, 0, nullptr, &f);
  });
  expect_abort("barrier against a collective", "deadlock in block (0,0,0)", [] {
    QK_CUDA_LAUNCH(barrier_in_warp_branch_kernel, 1, 64, 0, nullptr, out);
  });
  expect_abort("shared overrun", "past the end of dynamic shared memory", [] {
    QK_CUDA_LAUNCH(shared_overrun_kernel, 1, 32, 32 * sizeof(int), nullptr, out);
  });
  expect_abort("cp.async overrun", "cp.async writes past the end of dynamic shared memory", [] {
    alignas(16) static const uint8_t global[16] = {};
    QK_CUDA_LAUNCH(cp_async_overrun_kernel, 1, 32, 32 * 16, nullptr, global);
  });
  expect_abort("ldmatrix overrun", "ldmatrix reads past the end of dynamic shared memory", [] {
    static uint32_t registers[32 * 4];
    QK_CUDA_LAUNCH(ldmatrix_overrun_kernel, 1, 32, 32 * 16, nullptr, registers);
  });
  expect_abort("partial warp", "partial warp", [] {
    QK_CUDA_LAUNCH(partial_warp_kernel, 1, 48, 0, nullptr, out);
  });
  expect_abort("outside a launch", "outside a kernel launch", [] { qk_cp_async_commit(); });
  expect_abort("barrier outside a launch", "outside a kernel launch", [] { __syncthreads(); });
}

int main() {
  test_mma_float(0);
  test_mma_float(1);
  test_mma_s8();
  test_ldmatrix();
  test_lop3();
  test_prmt();
  test_shfl();
  test_cp_async();
  test_barrier();
  test_launch_arguments();
  test_errors();
  if (failures) {
    fprintf(stderr, "test_warp_emulator: %d failures\n", failures);
    return 1;
  }
  printf("test_warp_emulator: all passed\n");
  return 0;
}

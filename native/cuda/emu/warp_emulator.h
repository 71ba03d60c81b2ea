/*
 * The warp emulator: CUDA kernel source compiled as host C++ (g++ -x c++ -DQK_CUDA_EMULATE) runs
 * on the CPU, through ptx.cuh, which includes this header first.
 *
 * How it runs a launch (QK_CUDA_LAUNCH -> qk_emu::launch):
 *   - the blocks of the grid run one after another on the calling host thread;
 *   - a block's threads are fibers (ucontext, one stack each, a guard page below it), run by a
 *     round-robin scheduler in thread order: a thread runs until it waits, at __syncthreads (all
 *     threads of the block), __syncwarp or a warp collective (all 32 lanes of its warp), or exits.
 *     The last thread to arrive releases the others and carries on. Everything is deterministic.
 *   - a warp collective (mma, ldmatrix, shfl) is a rendezvous: each lane leaves the address of its
 *     registers, and the last lane computes every lane's result from all of them at once, following
 *     the fragment layouts of the PTX ISA. Lanes that reach different collectives abort the run.
 *   - no runnable thread while some wait is a deadlock (a barrier some thread never reaches, e.g.
 *     after an early return): the run aborts and says where each thread is waiting.
 *   - cp.async copies its source when issued but writes shared memory only at the wait_group that
 *     retires its group, so a missing wait leaves the poison in place; a thread's groups still in
 *     flight when it exits are dropped.
 *   - dynamic shared memory (QK_DYNAMIC_SHARED) is filled with 0xFF bytes (NaN in float16,
 *     bfloat16 and float32) before each block, with a guard area after it checked after the block.
 *     Static __shared__ variables are static thread_local: one per launching host thread, kept from
 *     one block to the next, not poisoned.
 * It does not model timing, bank conflicts, occupancy, register limits, or any memory ordering
 * beyond barriers and cp.async groups; tensor-core sums are float32 additions in k order, which
 * may differ from the hardware in the last bits.
 */
#ifndef QK_CUDA_WARP_EMULATOR_H
#define QK_CUDA_WARP_EMULATOR_H

#if !defined(QK_CUDA_EMULATE) || defined(__CUDACC__)
#error "warp_emulator.h is for host C++ builds with QK_CUDA_EMULATE"
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <deque>
#include <vector>

/* CUDA's qualifiers as host C++ (the toolkit headers above define them as nothing or as
 * annotations; these are the emulator's). */
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ static thread_local
#define __launch_bounds__(...)

/* extern __shared__ has no host C++ equivalent: kernels declare dynamic shared memory with this. */
#define QK_DYNAMIC_SHARED(type, name) \
  type* const name = static_cast<type*>(::qk_emu::dynamic_shared())

namespace qk_emu {

constexpr int kWarpSize = 32;
constexpr size_t kMaxSharedBytes = 227 * 1024; /* sm_90's opt-in limit, the largest target */
constexpr size_t kSharedGuardBytes = 256;
constexpr size_t kStackBytes = 256 * 1024;
constexpr unsigned char kPoison = 0xFF;

[[noreturn]] inline void fail(const char* message) {
  fprintf(stderr, "qk warp emulator: %s\n", message);
  fflush(stderr);
  abort();
}

struct CpAsync {
  void* dst;
  unsigned char bytes[16];
};

enum class Wait { Runnable, Barrier, Warp, Exited };

struct Thread {
  ucontext_t context;
  void* stack;
  uint3 index;
  Wait wait;
  std::vector<CpAsync> open_group;          /* issued since the last commit */
  std::deque<std::vector<CpAsync>> groups;  /* committed, oldest first */
};

/* A warp collective: the first lane names it, every lane leaves its registers' address. */
struct Rendezvous {
  const char* op;
  int arrived;
  void* lane_args[kWarpSize];
};

struct Block {
  std::vector<Thread> threads;
  std::vector<Rendezvous> warps;
  ucontext_t scheduler;
  int current;
  int at_barrier;
  void (*body)(void*);
  void* body_context;
  std::vector<unsigned char> shared;  /* dynamic shared memory, then the guard */
  size_t shared_bytes;
};

/* The running block of this host thread. */
inline thread_local Block* running_block = nullptr;

inline Thread& self() {
  if (running_block == nullptr) fail("a device operation was called outside a kernel launch");
  return running_block->threads[running_block->current];
}

inline int linear_thread(const Block& block) { return block.current; }

/* Hands control back to the scheduler until another thread releases this one. */
inline void wait_for_release(Wait wait) {
  Block& block = *running_block;
  Thread& thread = block.threads[block.current];
  thread.wait = wait;
  swapcontext(&thread.context, &block.scheduler);
}

}  // namespace qk_emu

/* CUDA's built-in variables: the scheduler sets them before it resumes a thread. */
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = qk_emu::kWarpSize;

inline void __syncthreads() {
  using namespace qk_emu;
  Block& block = *running_block;
  self();
  if (++block.at_barrier == (int)block.threads.size()) {
    block.at_barrier = 0;
    for (Thread& t : block.threads) t.wait = Wait::Runnable;
  } else {
    wait_for_release(Wait::Barrier);
  }
}

namespace qk_emu {

/* The warp rendezvous: returns in every lane after the last lane ran compute(lane_args). */
inline void warp_collective(const char* op, void* my_args, void (*compute)(void* const* lane_args)) {
  Block& block = *running_block;
  const int thread = linear_thread(block);
  const int warp = thread / kWarpSize;
  const int lane = thread % kWarpSize;
  if ((warp + 1) * kWarpSize > (int)block.threads.size()) {
    fail("a warp collective in a partial warp (the block size is not a multiple of 32)");
  }
  Rendezvous& r = block.warps[warp];
  if (r.arrived == 0) {
    r.op = op;
  } else if (strcmp(r.op, op) != 0) {
    char message[256];
    snprintf(message, sizeof message,
             "divergent warp collectives: warp %d lane %d reached %s while lanes of its warp wait "
             "at %s",
             warp, lane, op, r.op);
    fail(message);
  }
  r.lane_args[lane] = my_args;
  if (++r.arrived == kWarpSize) {
    compute(r.lane_args);
    r.arrived = 0;
    for (int l = 0; l < kWarpSize; ++l) block.threads[warp * kWarpSize + l].wait = Wait::Runnable;
  } else {
    wait_for_release(Wait::Warp);
  }
}

inline int lane_id() { return linear_thread(*running_block) % kWarpSize; }

/* ---- mma ---------------------------------------------------------------------------------- */

enum FloatInput { Float16, BFloat16 };

inline float input_to_float(FloatInput type, uint16_t bits) {
  return type == Float16 ? __half2float(__ushort_as_half(bits))
                         : __bfloat162float(__ushort_as_bfloat16(bits));
}

template <typename Acc>
struct MmaArgs {
  Acc* d;
  const uint32_t* a;
  const uint32_t* b;
  const Acc* c;
  FloatInput type;
};

/* Element (row, col) of A, B, C from the lanes' fragments; see the layout table in ptx.cuh. */
inline uint16_t mma16_a(void* const* lanes, int row, int k) {
  const int lane = (row % 8) * 4 + (k % 8) / 2;
  const int reg = (row / 8) + 2 * (k / 8);
  const uint32_t word = static_cast<MmaArgs<float>*>(lanes[lane])->a[reg];
  return (uint16_t)(word >> (16 * (k % 2)));
}
inline uint16_t mma16_b(void* const* lanes, int k, int col) {
  const int lane = col * 4 + (k % 8) / 2;
  const uint32_t word = static_cast<MmaArgs<float>*>(lanes[lane])->b[k / 8];
  return (uint16_t)(word >> (16 * (k % 2)));
}

inline void mma_m16n8k16_float(FloatInput type, float d[4], const uint32_t a[4],
                               const uint32_t b[2], const float c[4]) {
  MmaArgs<float> args{d, a, b, c, type};
  warp_collective("mma.m16n8k16.f32", &args, [](void* const* lanes) {
    float result[16][8];
    const FloatInput in = static_cast<MmaArgs<float>*>(lanes[0])->type;
    for (int row = 0; row < 16; ++row) {
      for (int col = 0; col < 8; ++col) {
        const int lane = (row % 8) * 4 + col / 2;
        float sum = static_cast<MmaArgs<float>*>(lanes[lane])->c[(row / 8) * 2 + col % 2];
        for (int k = 0; k < 16; ++k) {
          sum += input_to_float(in, mma16_a(lanes, row, k)) * input_to_float(in, mma16_b(lanes, k, col));
        }
        result[row][col] = sum;
      }
    }
    /* Written after every lane's c was read: d may alias c. */
    for (int row = 0; row < 16; ++row) {
      for (int col = 0; col < 8; ++col) {
        const int lane = (row % 8) * 4 + col / 2;
        static_cast<MmaArgs<float>*>(lanes[lane])->d[(row / 8) * 2 + col % 2] = result[row][col];
      }
    }
  });
}

inline void mma_m16n8k32_s8(int32_t d[4], const uint32_t a[4], const uint32_t b[2],
                            const int32_t c[4]) {
  MmaArgs<int32_t> args{d, a, b, c, Float16};
  warp_collective("mma.m16n8k32.s32.s8", &args, [](void* const* lanes) {
    auto lane_args = [&](int lane) { return static_cast<MmaArgs<int32_t>*>(lanes[lane]); };
    int32_t result[16][8];
    for (int row = 0; row < 16; ++row) {
      for (int col = 0; col < 8; ++col) {
        const int c_lane = (row % 8) * 4 + col / 2;
        uint32_t sum = (uint32_t)lane_args(c_lane)->c[(row / 8) * 2 + col % 2];
        for (int k = 0; k < 32; ++k) {
          const uint32_t a_word = lane_args((row % 8) * 4 + (k % 16) / 4)->a[(row / 8) + 2 * (k / 16)];
          const uint32_t b_word = lane_args(col * 4 + (k % 16) / 4)->b[k / 16];
          const int8_t a_value = (int8_t)(a_word >> (8 * (k % 4)));
          const int8_t b_value = (int8_t)(b_word >> (8 * (k % 4)));
          sum += (uint32_t)((int32_t)a_value * b_value); /* wraps modulo 2^32 as the hardware */
        }
        result[row][col] = (int32_t)sum;
      }
    }
    for (int row = 0; row < 16; ++row) {
      for (int col = 0; col < 8; ++col) {
        lane_args((row % 8) * 4 + col / 2)->d[(row / 8) * 2 + col % 2] = result[row][col];
      }
    }
  });
}

/* ---- ldmatrix ----------------------------------------------------------------------------- */

struct LdmatrixArgs {
  uint32_t* r;
  const void* row;
  int matrices;
  bool trans;
};

inline void ldmatrix(uint32_t* r, const void* smem_row, int matrices, bool trans) {
  LdmatrixArgs args{r, smem_row, matrices, trans};
  warp_collective(trans ? "ldmatrix.trans" : "ldmatrix", &args, [](void* const* lanes) {
    auto lane_args = [&](int lane) { return static_cast<LdmatrixArgs*>(lanes[lane]); };
    const int matrices = lane_args(0)->matrices;
    const bool trans = lane_args(0)->trans;
    for (int l = 1; l < kWarpSize; ++l) {
      if (lane_args(l)->matrices != matrices || lane_args(l)->trans != trans) {
        fail("divergent warp collectives: lanes run ldmatrix with different shapes");
      }
    }
    uint16_t m[4][8][8];
    for (int j = 0; j < matrices; ++j) {
      for (int row = 0; row < 8; ++row) {
        const uintptr_t address = (uintptr_t)lane_args(8 * j + row)->row;
        if (address % 16 != 0) fail("ldmatrix: a row address is not 16-byte aligned");
        memcpy(m[j][row], (const void*)address, 16);
      }
    }
    for (int l = 0; l < kWarpSize; ++l) {
      for (int j = 0; j < matrices; ++j) {
        const int r = l / 4, c = 2 * (l % 4);
        const uint16_t lo = trans ? m[j][c][r] : m[j][r][c];
        const uint16_t hi = trans ? m[j][c + 1][r] : m[j][r][c + 1];
        lane_args(l)->r[j] = (uint32_t)hi << 16 | lo;
      }
    }
  });
}

/* ---- shfl --------------------------------------------------------------------------------- */

struct ShuffleArgs {
  uint32_t value;
  int operand;
  bool xor_mode;
  uint32_t result;
};

template <typename T>
inline T shfl(T v, int operand, bool xor_mode) {
  ShuffleArgs args{0, operand, xor_mode, 0};
  memcpy(&args.value, &v, 4);
  warp_collective(xor_mode ? "shfl.bfly" : "shfl.idx", &args, [](void* const* lanes) {
    for (int l = 0; l < kWarpSize; ++l) {
      ShuffleArgs* mine = static_cast<ShuffleArgs*>(lanes[l]);
      const int source = mine->xor_mode ? (l ^ mine->operand) & 31 : mine->operand & 31;
      mine->result = static_cast<ShuffleArgs*>(lanes[source])->value;
    }
  });
  T out;
  memcpy(&out, &args.result, 4);
  return out;
}

/* ---- cp.async ----------------------------------------------------------------------------- */

inline void cp_async(void* smem, const void* gmem, int src_bytes) {
  if (src_bytes < 0 || src_bytes > 16) fail("cp.async: src_bytes outside 0..16");
  if ((uintptr_t)smem % 16 != 0 || (src_bytes > 0 && (uintptr_t)gmem % 16 != 0)) {
    fail("cp.async: a 16-byte copy between addresses not 16-byte aligned");
  }
  CpAsync copy;
  copy.dst = smem;
  memset(copy.bytes, 0, 16);
  if (src_bytes > 0) memcpy(copy.bytes, gmem, (size_t)src_bytes);
  self().open_group.push_back(copy);
}

inline void cp_async_commit() {
  Thread& thread = self();
  thread.groups.push_back(std::move(thread.open_group));
  thread.open_group.clear();
}

inline void cp_async_wait(int groups_left) {
  Thread& thread = self();
  while ((int)thread.groups.size() > groups_left) {
    for (const CpAsync& copy : thread.groups.front()) memcpy(copy.dst, copy.bytes, 16);
    thread.groups.pop_front();
  }
}

/* ---- the launch --------------------------------------------------------------------------- */

inline void* dynamic_shared() {
  Block& block = *running_block;
  self();
  return block.shared_bytes ? block.shared.data() : nullptr;
}

inline void thread_entry() {
  Block& block = *running_block;
  block.body(block.body_context);
  Thread& thread = block.threads[block.current];
  thread.wait = Wait::Exited;
  thread.groups.clear();
  thread.open_group.clear();
  /* uc_link resumes the scheduler */
}

/* Fiber stacks, kept for the next launch of this host thread. */
struct StackPool {
  std::vector<void*> stacks;
  ~StackPool() {
    for (void* s : stacks) munmap(s, kStackBytes + 4096);
  }
  void* get(size_t i) {
    while (stacks.size() <= i) {
      void* s = mmap(nullptr, kStackBytes + 4096, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (s == MAP_FAILED) fail("cannot map a fiber stack");
      mprotect(s, 4096, PROT_NONE); /* guard page: a stack overflow faults */
      stacks.push_back(s);
    }
    return (char*)stacks[i] + 4096;
  }
};
inline thread_local StackPool stack_pool;

[[noreturn]] inline void report_deadlock(const Block& block) {
  char message[4096];
  int used = snprintf(message, sizeof message,
                      "deadlock in block (%u,%u,%u): no thread can run;", blockIdx.x, blockIdx.y,
                      blockIdx.z);
  const char* names[] = {"running", "at __syncthreads", "at a warp collective", "exited"};
  for (int w = 0; w < 4; ++w) {
    int count = 0, first = -1;
    for (size_t t = 0; t < block.threads.size(); ++t) {
      if ((int)block.threads[t].wait == w) {
        if (first < 0) first = (int)t;
        ++count;
      }
    }
    if (count > 0 && used < (int)sizeof message) {
      used += snprintf(message + used, sizeof message - used, " %d threads %s (first: %d);", count,
                       names[w], first);
    }
  }
  fail(message);
}

inline void run_block(Block& block) {
  const size_t n = block.threads.size();
  for (size_t t = 0; t < n; ++t) {
    Thread& thread = block.threads[t];
    thread.index = uint3{(unsigned)(t % blockDim.x), (unsigned)(t / blockDim.x % blockDim.y),
                         (unsigned)(t / (blockDim.x * blockDim.y))};
    thread.wait = Wait::Runnable;
    thread.groups.clear();
    thread.open_group.clear();
    getcontext(&thread.context);
    thread.context.uc_stack.ss_sp = thread.stack;
    thread.context.uc_stack.ss_size = kStackBytes;
    thread.context.uc_link = &block.scheduler;
    makecontext(&thread.context, thread_entry, 0);
  }
  for (Rendezvous& r : block.warps) r.arrived = 0;
  block.at_barrier = 0;
  memset(block.shared.data(), kPoison, block.shared.size());
  size_t exited = 0;
  while (exited < n) {
    bool ran = false;
    exited = 0;
    for (size_t t = 0; t < n; ++t) {
      Thread& thread = block.threads[t];
      if (thread.wait == Wait::Runnable) {
        block.current = (int)t;
        threadIdx = thread.index;
        swapcontext(&block.scheduler, &thread.context);
        ran = true;
      }
      if (thread.wait == Wait::Exited) ++exited;
    }
    if (!ran && exited < n) report_deadlock(block);
  }
  for (size_t i = block.shared_bytes; i < block.shared.size(); ++i) {
    if (block.shared[i] != kPoison) fail("a write past the end of dynamic shared memory");
  }
}

inline void run_grid(dim3 grid, dim3 threads, size_t shared_bytes, void (*body)(void*),
                     void* body_context) {
  if (running_block != nullptr) fail("a kernel launch from inside a kernel");
  const size_t n = (size_t)threads.x * threads.y * threads.z;
  if (n == 0 || n > 1024) fail("a block of 0 or more than 1024 threads");
  if ((size_t)grid.x * grid.y * grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    fail("an empty grid or a grid dimension over the limit");
  }
  if (shared_bytes > kMaxSharedBytes) fail("more dynamic shared memory than any target has");
  Block block;
  block.threads.resize(n);
  for (size_t t = 0; t < n; ++t) block.threads[t].stack = stack_pool.get(t);
  block.warps.resize((n + kWarpSize - 1) / kWarpSize);
  block.body = body;
  block.body_context = body_context;
  block.shared_bytes = shared_bytes;
  block.shared.resize(shared_bytes + kSharedGuardBytes);
  blockDim = threads;
  gridDim = grid;
  running_block = &block;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        run_block(block);
      }
    }
  }
  running_block = nullptr;
}

/* Runs kernel_call (the kernel applied to its arguments) as every thread of every block. */
template <typename KernelCall>
void launch(dim3 grid, dim3 block, size_t shared_bytes, KernelCall kernel_call) {
  run_grid(grid, block, shared_bytes,
           [](void* call) { (*static_cast<KernelCall*>(call))(); }, &kernel_call);
}

}  // namespace qk_emu

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) qk_emu::fail("__syncwarp with a partial mask is not emulated");
  qk_emu::warp_collective("__syncwarp", nullptr, [](void* const*) {});
}

/* Atomics: the threads of a launch run one at a time on one host thread. */
template <typename T>
inline T atomicAdd(T* address, T value) {
  qk_emu::self();
  const T old = *address;
  *address = old + value;
  return old;
}

#endif /* QK_CUDA_WARP_EMULATOR_H */

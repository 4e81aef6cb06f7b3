// A CPU emulation of the CUDA execution model, just enough to run kernels/*.cu unchanged.
//
// Every CUDA thread of a block is a fiber (its own stack, cooperative switching) and the fibers of
// a block are scheduled in a seeded random order. A fiber runs until it reaches a block barrier
// (__syncthreads and its _or / _count forms), a warp collective (__shfl_*_sync, __ballot_sync,
// __match_any_sync, __syncwarp) or, at random, an atomic operation; it resumes when every thread
// of the block (barrier) or of its warp (collective) has arrived, with the collective's result
// computed from all 32 lanes. So code that reads what another thread writes without a barrier in
// between gives order-dependent results (caught by running each case under several seeds), and
// a barrier or collective reached by only part of a block or warp is an error, not a hang.
// Blocks run one after another in random order; __shared__ variables are static (one per block at
// a time); the dynamic shared memory is a fresh buffer per block filled with a NaN pattern.
//
// Used only by gpurisk.backends.cuda_emu (tests and the GPU check's --dry mode); never by the GPU.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace gr_emu {

struct Dim3 {
    unsigned x, y, z;
};

enum State { RUNNABLE, AT_BARRIER, AT_WARP, DONE };
enum WarpOp { W_NONE, W_SHFL_UP, W_SHFL_DOWN, W_SHFL_IDX, W_SHFL_XOR, W_BALLOT, W_MATCH_ANY, W_SYNC };
enum BarOp { B_PLAIN, B_OR, B_COUNT, B_AND };

struct Fiber {
    void* sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t ctx;
#endif
    char* stack = nullptr;
    Dim3 idx{0, 0, 0};
    int state = RUNNABLE;
    int op = W_NONE;
    int bar_op = B_PLAIN;
    unsigned long long value = 0;
    int arg = 0;
    int pred = 0;
    unsigned long long result = 0;
};

struct Emu {
    std::vector<Fiber> fibers;
    Fiber* cur = nullptr;
    void* sched_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t sched_ctx;
#endif
    std::mt19937_64 rng;
    Dim3 block_idx{0, 0, 0}, grid_dim{1, 1, 1}, block_dim{1, 1, 1};
    std::vector<double> dyn_smem;
    std::function<void()> body;
    std::string error;
    unsigned yield_one_in = 4;  // an atomic yields with probability 1/yield_one_in
};

inline Emu& emu()
{
    static Emu e;
    return e;
}

inline void fail(const std::string& why)
{
    if (emu().error.empty()) {
        emu().error = why;
    }
}

#if defined(__x86_64__)
extern "C" void gr_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl gr_emu_switch
    .type gr_emu_switch, @function
gr_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gr_emu_switch, .-gr_emu_switch
)");
#endif

inline void to_scheduler()
{
    Emu& e = emu();
#if defined(__x86_64__)
    gr_emu_switch(&e.cur->sp, e.sched_sp);
#else
    swapcontext(&e.cur->ctx, &e.sched_ctx);
#endif
}

[[noreturn]] inline void fiber_main()
{
    Emu& e = emu();
    e.body();
    e.cur->state = DONE;
    to_scheduler();
    std::abort();  // a finished fiber is never resumed
}

#if defined(__x86_64__)
extern "C" inline void gr_emu_entry() { fiber_main(); }
#else
inline void gr_emu_entry_uc() { fiber_main(); }
#endif

constexpr size_t STACK_BYTES = 256 * 1024;

inline void start_fiber(Fiber& f)
{
    f.stack = static_cast<char*>(std::malloc(STACK_BYTES));
#if defined(__x86_64__)
    // frame popped by gr_emu_switch: [mxcsr|fpcw][r15 r14 r13 r12 rbx rbp][return address]; entry then sees
    // rsp ≡ 8 (mod 16) as after a call
    uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + STACK_BYTES) & ~uintptr_t(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;  // alignment slot (the entry's would-be return address)
    *--sp = reinterpret_cast<uint64_t>(&gr_emu_entry);
    for (int r = 0; r < 6; ++r) {
        *--sp = 0;
    }
    --sp;
    uint32_t csr = 0x1F80;  // default MXCSR: round to nearest, all exceptions masked
    uint16_t fpcw = 0x037F;
    std::memcpy(sp, &csr, 4);
    std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpcw, 2);
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = STACK_BYTES;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, gr_emu_entry_uc, 0);
#endif
}

inline void resume(Fiber& f)
{
    Emu& e = emu();
    e.cur = &f;
#if defined(__x86_64__)
    gr_emu_switch(&e.sched_sp, f.sp);
#else
    swapcontext(&e.sched_ctx, &f.ctx);
#endif
    e.cur = nullptr;
}

inline unsigned lane_of(const Fiber& f) { return f.idx.x & 31u; }

// Release a warp whose 32 lanes all wait on the same collective; false if it cannot be released.
inline bool release_warp(int w)
{
    Emu& e = emu();
    Fiber* lanes = &e.fibers[size_t(w) * 32];
    int op = lanes[0].op;
    for (int l = 0; l < 32; ++l) {
        if (lanes[l].state != AT_WARP || lanes[l].op != op) {
            return false;
        }
    }
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l) {
        ballot |= (lanes[l].pred ? 1u : 0u) << l;
    }
    for (int l = 0; l < 32; ++l) {
        Fiber& f = lanes[l];
        int src = l;
        switch (op) {
            case W_SHFL_UP: src = l - f.arg >= 0 ? l - f.arg : l; break;
            case W_SHFL_DOWN: src = l + f.arg < 32 ? l + f.arg : l; break;
            case W_SHFL_IDX: src = f.arg & 31; break;
            case W_SHFL_XOR: src = (l ^ f.arg) & 31; break;
            default: break;
        }
        if (op == W_BALLOT) {
            f.result = ballot;
        } else if (op == W_MATCH_ANY) {
            unsigned peers = 0;
            for (int o = 0; o < 32; ++o) {
                peers |= (lanes[o].value == f.value ? 1u : 0u) << o;
            }
            f.result = peers;
        } else {
            f.result = lanes[src].value;
        }
        f.state = RUNNABLE;
        f.op = W_NONE;
    }
    return true;
}

inline void run_block(size_t n_threads)
{
    Emu& e = emu();
    e.fibers.assign(n_threads, Fiber());
    for (size_t t = 0; t < n_threads; ++t) {
        e.fibers[t].idx = Dim3{unsigned(t), 0, 0};
        start_fiber(e.fibers[t]);
    }
    std::vector<size_t> order(n_threads);
    for (size_t t = 0; t < n_threads; ++t) {
        order[t] = t;
    }
    while (e.error.empty()) {
        std::shuffle(order.begin(), order.end(), e.rng);
        bool ran = false;
        for (size_t t : order) {
            if (e.fibers[t].state == RUNNABLE) {
                resume(e.fibers[t]);
                ran = true;
                if (!e.error.empty()) {
                    break;
                }
            }
        }
        if (ran || !e.error.empty()) {
            continue;
        }
        // nothing runnable: release a barrier or warp collectives, or stop
        size_t done = 0, at_bar = 0, at_warp = 0;
        for (auto& f : e.fibers) {
            done += f.state == DONE;
            at_bar += f.state == AT_BARRIER;
            at_warp += f.state == AT_WARP;
        }
        if (done == n_threads) {
            break;
        }
        bool released = false;
        for (size_t w = 0; w < n_threads / 32; ++w) {
            released |= release_warp(int(w));
        }
        if (released) {
            continue;
        }
        if (at_bar == n_threads) {
            int op = e.fibers[0].bar_op;
            int any = 0, all = 1, count = 0;
            for (auto& f : e.fibers) {
                if (f.bar_op != op) {
                    fail("threads of a block wait at different kinds of __syncthreads");
                }
                any |= f.pred != 0;
                all &= f.pred != 0;
                count += f.pred != 0;
            }
            for (auto& f : e.fibers) {
                f.result = op == B_OR ? any : op == B_AND ? all : count;
                f.state = RUNNABLE;
            }
            continue;
        }
        char msg[200];
        std::snprintf(msg, sizeof msg,
                      "block (%u) cannot proceed: %zu threads at __syncthreads, %zu at a warp collective, %zu exited",
                      e.block_idx.x, at_bar, at_warp, done);
        fail(msg);
    }
    for (auto& f : e.fibers) {
        std::free(f.stack);
    }
    e.fibers.clear();
}

inline unsigned long long warp_op(int op, unsigned long long value, int arg, int pred, unsigned mask)
{
    Emu& e = emu();
    if (mask != 0xffffffffu) {
        fail("only full-warp collectives (mask 0xffffffff) are emulated");
    }
    Fiber* f = e.cur;
    f->op = op;
    f->value = value;
    f->arg = arg;
    f->pred = pred;
    f->state = AT_WARP;
    to_scheduler();
    return f->result;
}

inline int block_barrier(int bar_op, int pred)
{
    Fiber* f = emu().cur;
    f->bar_op = bar_op;
    f->pred = pred;
    f->state = AT_BARRIER;
    to_scheduler();
    return int(f->result);
}

inline void maybe_yield()
{
    Emu& e = emu();
    if (e.cur && e.rng() % e.yield_one_in == 0) {
        to_scheduler();
    }
}

template <class T>
inline unsigned long long to_bits(T v)
{
    unsigned long long b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}

template <class T>
inline T from_bits(unsigned long long b)
{
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

// Run a kernel: args[i] points at the value of its i-th parameter (CUDA's kernelParams convention).
template <class... A, size_t... I>
inline void call_kernel(void (*k)(A...), void** args, std::index_sequence<I...>)
{
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A>
inline std::string launch(void (*k)(A...), unsigned grid, unsigned block, size_t smem_bytes, void** args,
                          unsigned long long seed)
{
    Emu& e = emu();
    e.error.clear();
    e.rng.seed(seed);
    if (block == 0 || block % 32 != 0) {
        return "the emulator runs blocks of a multiple of 32 threads";
    }
    e.grid_dim = Dim3{grid, 1, 1};
    e.block_dim = Dim3{block, 1, 1};
    e.body = [k, args]() { call_kernel(k, args, std::index_sequence_for<A...>{}); };
    std::vector<unsigned> blocks(grid);
    for (unsigned b = 0; b < grid; ++b) {
        blocks[b] = b;
    }
    std::shuffle(blocks.begin(), blocks.end(), e.rng);
    for (unsigned b : blocks) {
        e.block_idx = Dim3{b, 0, 0};
        e.dyn_smem.assign(smem_bytes / sizeof(double) + 1, std::nan(""));
        run_block(block);
        if (!e.error.empty()) {
            break;
        }
    }
    return e.error;
}

}  // namespace gr_emu

// ---- the CUDA vocabulary the kernels use ----

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define GR_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(gr_emu::emu().dyn_smem.data())

#define threadIdx (gr_emu::emu().cur->idx)
#define blockIdx (gr_emu::emu().block_idx)
#define blockDim (gr_emu::emu().block_dim)
#define gridDim (gr_emu::emu().grid_dim)

inline void __syncthreads() { gr_emu::block_barrier(gr_emu::B_PLAIN, 0); }
inline int __syncthreads_or(int p) { return gr_emu::block_barrier(gr_emu::B_OR, p); }
inline int __syncthreads_and(int p) { return gr_emu::block_barrier(gr_emu::B_AND, p); }
inline int __syncthreads_count(int p) { return gr_emu::block_barrier(gr_emu::B_COUNT, p); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { gr_emu::warp_op(gr_emu::W_SYNC, 0, 0, 0, mask); }

inline unsigned __ballot_sync(unsigned mask, int pred)
{
    return unsigned(gr_emu::warp_op(gr_emu::W_BALLOT, 0, 0, pred != 0, mask));
}

template <class T>
inline unsigned __match_any_sync(unsigned mask, T v)
{
    return unsigned(gr_emu::warp_op(gr_emu::W_MATCH_ANY, gr_emu::to_bits(v), 0, 0, mask));
}

template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32)
{
    (void)width;
    return gr_emu::from_bits<T>(gr_emu::warp_op(gr_emu::W_SHFL_UP, gr_emu::to_bits(v), int(d), 0, mask));
}

template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32)
{
    (void)width;
    return gr_emu::from_bits<T>(gr_emu::warp_op(gr_emu::W_SHFL_DOWN, gr_emu::to_bits(v), int(d), 0, mask));
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
    (void)width;
    return gr_emu::from_bits<T>(gr_emu::warp_op(gr_emu::W_SHFL_IDX, gr_emu::to_bits(v), src, 0, mask));
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
    (void)width;
    return gr_emu::from_bits<T>(gr_emu::warp_op(gr_emu::W_SHFL_XOR, gr_emu::to_bits(v), lane_mask, 0, mask));
}

template <class T>
inline T atomicAdd(T* a, T v)
{
    gr_emu::maybe_yield();
    T old = *a;
    *a = old + v;
    return old;
}

template <class T>
inline T atomicOr(T* a, T v)
{
    gr_emu::maybe_yield();
    T old = *a;
    *a = old | v;
    return old;
}

template <class T>
inline T atomicMax(T* a, T v)
{
    gr_emu::maybe_yield();
    T old = *a;
    *a = old > v ? old : v;
    return old;
}

template <class T>
inline T atomicMin(T* a, T v)
{
    gr_emu::maybe_yield();
    T old = *a;
    *a = old < v ? old : v;
    return old;
}

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(unsigned(v)); }
inline long long __double_as_longlong(double x) { return gr_emu::from_bits<long long>(gr_emu::to_bits(x)); }
inline double __longlong_as_double(long long x) { return gr_emu::from_bits<double>(gr_emu::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return gr_emu::from_bits<unsigned>(gr_emu::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return gr_emu::from_bits<float>(gr_emu::to_bits(x)); }
inline int __double2int_rn(double x) { return int(std::nearbyint(x)); }
inline float __double2float_rn(double x) { return float(x); }
inline float __int2float_rn(int x) { return float(x); }
using std::fabs;
using std::fmax;
using std::fmin;
using std::isfinite;

// The kernels of kernels/*.cu compiled for the CPU under the emulation in cuda_emu.h, with one C entry
// point that launches any of them by name (gpurisk.backends.cuda_emu builds and loads this file).

#define GR_EMULATE 1
#include "cuda_emu.h"

#include "../revalue.cu"
#include "../tail_stats.cu"

#include <cstring>
#include <string>

extern "C" const char* gr_emu_launch(const char* fn, unsigned grid, unsigned block, unsigned long long smem,
                                     void** args, unsigned long long seed)
{
    static std::string err;
    if (std::strcmp(fn, "tail_stats") == 0) {
        err = gr_emu::launch(tail_stats, grid, block, smem, args, seed);
    } else if (std::strcmp(fn, "tail_marginals") == 0) {
        err = gr_emu::launch(tail_marginals, grid, block, smem, args, seed);
    } else if (std::strcmp(fn, "quantize_rows") == 0) {
        err = gr_emu::launch(quantize_rows, grid, block, smem, args, seed);
    } else if (std::strcmp(fn, "instrument_base") == 0) {
        err = gr_emu::launch(instrument_base, grid, block, smem, args, seed);
    } else if (std::strcmp(fn, "revalue_pnl") == 0) {
        err = gr_emu::launch(revalue_pnl, grid, block, smem, args, seed);
    } else {
        err = std::string("no kernel named ") + fn;
    }
    return err.c_str();
}

// kernel_host_emulation.cu - runs the per-pixel / per-element device code of
// the RX and NSI kernels as host code (no GPU), for test_kernel_host_emulation.py.
//
// The kernels' arithmetic lives in __host__ __device__ functions
// (cuda/src/rx_pixels.cuh, nsi_elements.cuh); local RX is written against a
// Warp policy, and HostWarp runs its 32 lanes one after another between the
// barriers. What this does NOT exercise: real concurrency (races, missing
// barriers), launch configuration, the block scans of the NSI compaction
// (replaced here by a sequential prefix count), and device intrinsics (host
// float arithmetic stands in for __fadd_rn etc.; both are IEEE binary32).
//
//   kernel_host_emulation nsi       IN OUT rows cols p beta lam variant k
//   kernel_host_emulation rx_global IN OUT bands height width dtype     (IN: cube, mean, inv_cov)
//   kernel_host_emulation rx_local  IN OUT bands height width dtype outer inner reg
//
// IN and OUT are raw little-endian files: inputs concatenated, outputs too.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "nsi_elements.cuh"
#include "rx_pixels.cuh"

using namespace satedge::detail;

static std::vector<char> read_all(const char *path) {
    std::vector<char> buf;
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        buf.insert(buf.end(), chunk, chunk + n);
    }
    fclose(f);
    return buf;
}

static void write_all(const char *path, const std::vector<char> &buf) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf.data(), 1, buf.size(), f) != buf.size()) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

template <class T>
static void append(std::vector<char> &out, const T *p, size_t n) {
    const char *c = reinterpret_cast<const char *>(p);
    out.insert(out.end(), c, c + n * sizeof(T));
}

static int run_nsi(char **a) {
    std::vector<char> in = read_all(a[0]);
    NsiParams q;
    q.rows = atoi(a[2]);
    q.cols = atoi(a[3]);
    q.p = atoi(a[4]);
    q.beta = static_cast<float>(atof(a[5]));
    q.lam = static_cast<float>(atof(a[6]));
    q.variant = atoi(a[7]);
    const unsigned k = static_cast<unsigned>(atoi(a[8]));
    q.grad = reinterpret_cast<const float *>(in.data());
    const int n = q.rows * q.cols;
    std::vector<float> score(n);
    for (int i = 0; i < n; ++i) {
        score[i] = nsi_score_at(q, i / q.cols, i % q.cols);
    }
    // Radix select as the histogram + pick kernels do it.
    SelectState st = {0u, 0u, k, 0u};
    for (int shift = 24; shift >= 0; shift -= 8) {
        unsigned hist[256] = {0};
        for (int i = 0; i < n; ++i) {
            const unsigned key = order_key(score[i]);
            if ((key & st.mask) == st.prefix) {
                ++hist[(key >> shift) & 0xFFu];
            }
        }
        radix_pick(hist, shift, st);
    }
    // Compaction: slots from sequential prefix counts (the kernels use block scans).
    std::vector<int32_t> index(k, -1);
    std::vector<float> value(k, 0.0f);
    unsigned gt = 0, eq = 0;
    for (int i = 0; i < n; ++i) {
        const unsigned key = order_key(score[i]);
        const bool is_gt = key > st.prefix, is_eq = key == st.prefix;
        if (is_gt || (is_eq && eq < st.k_rem)) {
            const unsigned slot = output_slot(gt, eq, st.k_rem);
            if (slot >= k) {
                fprintf(stderr, "slot %u out of range\n", slot);
                return 3;
            }
            index[slot] = i;
            value[slot] = q.grad[i];
        }
        gt += is_gt;
        eq += is_eq;
    }
    const float threshold = key_value(st.prefix);
    std::vector<char> out;
    append(out, score.data(), score.size());
    append(out, index.data(), index.size());
    append(out, value.data(), value.size());
    append(out, &threshold, 1);
    write_all(a[1], out);
    return 0;
}

template <class Cube>
static void global_all(const Cube &cube, const float *mean, const float *inv, int bands, int64_t n_pix,
                       std::vector<float> &score) {
    for (int64_t p = 0; p < n_pix; ++p) {
        score[p] = rx_global_pixel<8>(cube, mean, inv, bands, n_pix, p);
    }
}

template <class Cube, int MAXE>
static void local_all(const Cube &cube, const LocalRxGeom &g, std::vector<float> &score) {
    HostWarp w;
    std::vector<LocalRxLane<MAXE> > lanes(32);
    LocalRxScratch s;
    memset(&s, 0xFF, sizeof s);  // garbage, as uninitialised shared memory
    local_rx_setup(w, lanes.data(), g.bands);
    for (int y = 0; y < g.height; ++y) {
        for (int x = 0; x < g.width; ++x) {
            score[static_cast<size_t>(y) * g.width + x] = local_rx_pixel(w, lanes.data(), s, cube, g, y, x);
        }
    }
}

template <class Cube>
static void local_dispatch(const Cube &cube, const LocalRxGeom &g, std::vector<float> &score) {
    if (g.bands <= 8) {
        local_all<Cube, 2>(cube, g, score);
    } else if (g.bands <= 16) {
        local_all<Cube, 5>(cube, g, score);
    } else {
        local_all<Cube, 17>(cube, g, score);
    }
}

static int run_rx(bool local, char **a) {
    std::vector<char> in = read_all(a[0]);
    const int bands = atoi(a[2]), height = atoi(a[3]), width = atoi(a[4]);
    const bool half = strcmp(a[5], "float16") == 0;
    const int64_t n_pix = static_cast<int64_t>(height) * width;
    const size_t cube_bytes = static_cast<size_t>(bands * n_pix) * (half ? 2 : 4);
    std::vector<float> score(n_pix);
    CubeF32 c32;
    CubeF16 c16;
    c32.p = reinterpret_cast<const float *>(in.data());
    c16.p = reinterpret_cast<const unsigned short *>(in.data());
    if (local) {
        LocalRxGeom g;
        g.bands = bands;
        g.height = height;
        g.width = width;
        g.outer_half = atoi(a[6]) / 2;
        g.inner_half = atoi(a[7]) / 2;
        g.regularization = static_cast<float>(atof(a[8]));
        if (half) {
            local_dispatch(c16, g, score);
        } else {
            local_dispatch(c32, g, score);
        }
    } else {
        const float *mean = reinterpret_cast<const float *>(in.data() + cube_bytes);
        const float *inv = mean + bands;
        if (half) {
            global_all(c16, mean, inv, bands, n_pix, score);
        } else {
            global_all(c32, mean, inv, bands, n_pix, score);
        }
    }
    std::vector<char> out;
    append(out, score.data(), score.size());
    write_all(a[1], out);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 11 && strcmp(argv[1], "nsi") == 0) {
        return run_nsi(argv + 2);
    }
    if (argc >= 8 && strcmp(argv[1], "rx_global") == 0) {
        return run_rx(false, argv + 2);
    }
    if (argc >= 11 && strcmp(argv[1], "rx_local") == 0) {
        return run_rx(true, argv + 2);
    }
    fprintf(stderr, "usage: see the header of kernel_host_emulation.cu\n");
    return 2;
}

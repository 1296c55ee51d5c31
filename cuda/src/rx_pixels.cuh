// rx_pixels.cuh - internal: the per-pixel work of the RX kernels (rx.cu).
//
// Global RX: one thread per pixel, bands in register chunks of K.
// Local RX: one warp per pixel, written against a Warp policy (device_common.cuh)
// so the same code runs as host code in the emulation test. Contract and
// formulas: satedge_kernels.h.
#ifndef SATEDGE_RX_PIXELS_CUH_
#define SATEDGE_RX_PIXELS_CUH_

#include <cuda_fp16.h>
#include <stdint.h>

#include "device_common.cuh"

namespace satedge {
namespace detail {

// IEEE binary16 bits -> float, exact (host and device give the same value).
SATEDGE_HD float half_bits_to_float(unsigned short h) {
#ifdef __CUDA_ARCH__
    return __half2float(__ushort_as_half(h));
#else
    const unsigned sign = (h & 0x8000u) << 16;
    unsigned exp = (h >> 10) & 0x1Fu;
    unsigned man = h & 0x3FFu;
    unsigned bits;
    if (exp == 0x1Fu) {
        bits = sign | 0x7F800000u | (man << 13);  // inf / nan
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;  // +-0
    } else {          // subnormal half: normalise
        exp = 113u;
        while ((man & 0x400u) == 0) {
            man <<= 1;
            --exp;
        }
        bits = sign | (exp << 23) | ((man & 0x3FFu) << 13);
    }
    float f;
    __builtin_memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

// Cube value loaders: index -> float.
struct CubeF32 {
    const float *p;
    SATEDGE_HD float at(int64_t i) const { return cached_load(p + i); }
};

struct CubeF16 {
    const unsigned short *p;  // IEEE binary16 bits
    SATEDGE_HD float at(int64_t i) const { return half_bits_to_float(cached_load(p + i)); }
};

// ---- global RX --------------------------------------------------------------

// d[a] = x[b0 + a] - mean[b0 + a] for the K bands from b0 (0 past the last band).
template <int K, class Cube>
SATEDGE_HD void rx_load_chunk(const Cube &cube, const float *mean, int bands, int64_t n_pix, int64_t p, int b0,
                              float d[K]) {
    SATEDGE_UNROLL
    for (int a = 0; a < K; ++a) {
        const int b = b0 + a;
        d[a] = b < bands ? cube.at(static_cast<int64_t>(b) * n_pix + p) - cached_load(mean + b) : 0.0f;
    }
}

// (x_p - mean)^T C (x_p - mean) with C symmetric, lower triangle read:
// sum_i d_i (C_ii d_i + 2 u_i), u_i = sum_{j<i} C_ij d_j.
template <int K, class Cube>
SATEDGE_HD float rx_global_pixel(const Cube &cube, const float *mean, const float *inv_cov, int bands,
                                 int64_t n_pix, int64_t p) {
    float score = 0.0f;
    for (int i0 = 0; i0 < bands; i0 += K) {
        float di[K];
        float u[K];
        rx_load_chunk<K>(cube, mean, bands, n_pix, p, i0, di);
        SATEDGE_UNROLL
        for (int a = 0; a < K; ++a) {
            u[a] = 0.0f;
        }
        for (int j0 = 0; j0 < i0; j0 += K) {  // whole chunks left of the diagonal block
            float dj[K];
            rx_load_chunk<K>(cube, mean, bands, n_pix, p, j0, dj);
            SATEDGE_UNROLL
            for (int a = 0; a < K; ++a) {
                const int row = imin(i0 + a, bands - 1);  // rows past the end are discarded below
                const float *c = inv_cov + static_cast<int64_t>(row) * bands + j0;
                SATEDGE_UNROLL
                for (int b = 0; b < K; ++b) {
                    u[a] += cached_load(c + b) * dj[b];
                }
            }
        }
        SATEDGE_UNROLL
        for (int a = 0; a < K; ++a) {  // diagonal block
            if (i0 + a < bands) {
                const int row = i0 + a;
                const float *c = inv_cov + static_cast<int64_t>(row) * bands;
                SATEDGE_UNROLL
                for (int b = 0; b < a; ++b) {
                    u[a] += cached_load(c + i0 + b) * di[b];
                }
                score += di[a] * (cached_load(c + row) * di[a] + 2.0f * u[a]);
            }
        }
    }
    return score;
}

// ---- local RX ---------------------------------------------------------------

struct LocalRxGeom {
    int bands;
    int height;
    int width;
    int outer_half;  // outer / 2
    int inner_half;  // inner / 2
    float regularization;
};

// Shared memory of one warp. `m` holds a chunk of background pixels
// (m[k][i] = x_k(q_i) - x_k(p)) while accumulating, then the matrix.
// Row stride 33: lanes reading different rows at one column hit different banks.
struct LocalRxScratch {
    float m[32][33];
    float center[32];
    float mean[32];
    float b[32];
};

// Per-lane state. Lane L owns the packed lower-triangle entries e = L + 32 j
// (j < MAXE) of the d x d second-moment matrix, and the band sum of band L.
template <int MAXE>
struct LocalRxLane {
    float acc[MAXE];
    unsigned off[MAXE];  // (row k * 33) | (column l * 33) << 16 into LocalRxScratch::m
    int count;           // entries owned
    float sum;
    float trace;
    float score;
    bool ok;
};

// Once per thread (depends on the lane and d only): which entries the lane owns.
template <class Warp, int MAXE>
SATEDGE_HD void local_rx_setup(const Warp &w, LocalRxLane<MAXE> *lanes, int d) {
    const int total = d * (d + 1) / 2;
    w.each([&](int lane) {
        LocalRxLane<MAXE> &st = lanes[w.slot(lane)];
        st.count = 0;
        SATEDGE_UNROLL
        for (int j = 0; j < MAXE; ++j) {
            const int e = lane + 32 * j;
            int k = 0;
            while ((k + 1) * (k + 2) / 2 <= e) {
                ++k;
            }
            const int l = e - k * (k + 1) / 2;
            st.off[j] = e < total ? static_cast<unsigned>(k * 33) | (static_cast<unsigned>(l * 33) << 16) : 0u;
            st.count += e < total ? 1 : 0;
        }
    });
}

// Per pixel: clear the accumulators.
template <int MAXE>
SATEDGE_HD void local_rx_lane_reset(LocalRxLane<MAXE> &st) {
    SATEDGE_UNROLL
    for (int j = 0; j < MAXE; ++j) {
        st.acc[j] = 0.0f;
    }
    st.sum = 0.0f;
    st.trace = 0.0f;
    st.score = 0.0f;
    st.ok = true;
}

// Accumulate the `cnt` staged background pixels into the lane's entries.
template <int MAXE>
SATEDGE_HD void local_rx_accumulate(LocalRxLane<MAXE> &st, const LocalRxScratch &s, int lane, int d, int cnt) {
    const float *m = &s.m[0][0];
    for (int i = 0; i < cnt; ++i) {
        SATEDGE_UNROLL
        for (int j = 0; j < MAXE; ++j) {
            if (j < st.count) {
                st.acc[j] += m[(st.off[j] & 0xFFFFu) + i] * m[(st.off[j] >> 16) + i];
            }
        }
        if (lane < d) {
            st.sum += s.m[lane][i];
        }
    }
}

// Stage background pixels (r, c0 .. c0+cnt-1), cnt <= 32, and accumulate them.
template <class Warp, class Cube, int MAXE>
SATEDGE_HD void local_rx_segment(const Warp &w, LocalRxLane<MAXE> *lanes, LocalRxScratch &s, const Cube &cube,
                                 const LocalRxGeom &g, int64_t n_pix, int r, int c0, int cnt) {
    const int d = g.bands;
    w.each([&](int lane) {
        if (lane < cnt) {
            const int64_t q = static_cast<int64_t>(r) * g.width + c0 + lane;
            for (int k = 0; k < d; ++k) {
                s.m[k][lane] = cube.at(static_cast<int64_t>(k) * n_pix + q) - s.center[k];
            }
        }
    });
    w.sync();
    w.each([&](int lane) { local_rx_accumulate(lanes[w.slot(lane)], s, lane, d, cnt); });
    w.sync();
}

// Score of pixel (y, x); every lane returns the same value. `lanes` is the
// calling thread's state on the device, 32 slots in the host emulation, set
// up by local_rx_setup.
template <class Warp, class Cube, int MAXE>
SATEDGE_HD float local_rx_pixel(const Warp &w, LocalRxLane<MAXE> *lanes, LocalRxScratch &s, const Cube &cube,
                                const LocalRxGeom &g, int y, int x) {
    const int d = g.bands;
    const int64_t n_pix = static_cast<int64_t>(g.height) * g.width;
    const int64_t p = static_cast<int64_t>(y) * g.width + x;
    w.each([&](int lane) {
        local_rx_lane_reset(lanes[w.slot(lane)]);
        if (lane < d) {
            s.center[lane] = cube.at(static_cast<int64_t>(lane) * n_pix + p);
        }
    });
    w.sync();

    // Background: outer square minus the inner guard square, cut at the border;
    // each row is one or two column segments, staged 32 pixels at a time.
    const int ho = g.outer_half, hi = g.inner_half;
    const int r0 = imax(y - ho, 0), r1 = imin(y + ho, g.height - 1);
    const int c0 = imax(x - ho, 0), c1 = imin(x + ho, g.width - 1);
    int n = 0;
    for (int r = r0; r <= r1; ++r) {
        const bool guard_row = r >= y - hi && r <= y + hi;
        for (int seg = 0; seg < (guard_row ? 2 : 1); ++seg) {
            const int a = guard_row && seg == 1 ? imax(x + hi + 1, c0) : c0;
            const int e = guard_row && seg == 0 ? imin(x - hi - 1, c1) : c1;
            for (int cs = a; cs <= e; cs += 32) {
                const int cnt = imin(32, e - cs + 1);
                local_rx_segment(w, lanes, s, cube, g, n_pix, r, cs, cnt);
                n += cnt;
            }
        }
    }

    // Mean and covariance of the shifted values y_q = x_q - x_p; x_p - mu = -mean(y).
    const float fn = static_cast<float>(n);
    w.each([&](int lane) {
        if (lane < d) {
            s.mean[lane] = lanes[w.slot(lane)].sum / fn;
        }
    });
    w.sync();
    w.each([&](int lane) {
        const LocalRxLane<MAXE> &st = lanes[w.slot(lane)];
        SATEDGE_UNROLL
        for (int j = 0; j < MAXE; ++j) {
            if (j < st.count) {
                const int k = static_cast<int>(st.off[j] & 0xFFFFu) / 33;
                const int l = static_cast<int>(st.off[j] >> 16) / 33;
                s.m[k][l] = st.acc[j] / fn - s.mean[k] * s.mean[l];
            }
        }
    });
    w.sync();
    w.each([&](int lane) {
        float tr = 0.0f;
        for (int k = 0; k < d; ++k) {
            tr += s.m[k][k];
        }
        lanes[w.slot(lane)].trace = tr;
    });
    w.sync();
    w.each([&](int lane) {
        if (lane < d) {
            s.m[lane][lane] += g.regularization * lanes[w.slot(lane)].trace / static_cast<float>(d);
            s.b[lane] = -s.mean[lane];
        }
    });
    w.sync();

    // Cholesky S = L L^T in place (lower triangle) with forward substitution
    // L z = b on the fly; score = |z|^2. Lane i updates row i.
    for (int k = 0; k < d; ++k) {
        w.each([&](int lane) {
            LocalRxLane<MAXE> &st = lanes[w.slot(lane)];
            const float akk = s.m[k][k];
            st.ok = st.ok && akk > 0.0f;
            const float lkk = sqrtf(akk);
            const float zk = s.b[k] / lkk;
            st.score += zk * zk;
            if (lane > k && lane < d) {
                const float lik = s.m[lane][k] / lkk;
                s.m[lane][k] = lik;
                s.b[lane] -= lik * zk;
            }
        });
        w.sync();
        w.each([&](int lane) {
            if (lane > k && lane < d) {
                const float lik = s.m[lane][k];
                for (int j = k + 1; j <= lane; ++j) {
                    s.m[lane][j] -= lik * s.m[j][k];
                }
            }
        });
        w.sync();
    }
    const LocalRxLane<MAXE> &first = lanes[w.slot(0)];
    return first.ok ? first.score : quiet_nan();
}

}  // namespace detail
}  // namespace satedge

#endif  // SATEDGE_RX_PIXELS_CUH_

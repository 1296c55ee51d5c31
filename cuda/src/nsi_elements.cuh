// nsi_elements.cuh - internal: per-element work of the NSI sparsification
// kernels (nsi_sparsify.cu): the float32 NSI score in its fixed order, the
// monotonic sort key, one radix-select step and the output position rule.
//
// All __host__ __device__: the host emulation test runs them against the
// numpy reference (engines/ops/nsi.py). Formulas: satedge_kernels.h.
#ifndef SATEDGE_NSI_ELEMENTS_CUH_
#define SATEDGE_NSI_ELEMENTS_CUH_

#include <stdint.h>

#include "device_common.cuh"

namespace satedge {
namespace detail {

struct NsiParams {
    const float *grad;
    int rows;
    int cols;
    int p;  // odd window side
    float beta;
    float lam;
    int variant;  // satedge_nsi_variant: 0 coherence, 1 mean_std
};

// NSI score of element (r, c). Sums: columns ascending of (rows ascending),
// starting from 0, each add rounded (out-of-layer elements are skipped: the
// numpy reference adds zeros there, which changes nothing but the sign of a
// zero sum).
SATEDGE_HD float nsi_score_at(const NsiParams &q, int r, int c) {
    const int h = q.p >> 1;
    const int i0 = imax(r - h, 0), i1 = imin(r + h, q.rows - 1);
    const int j0 = imax(c - h, 0), j1 = imin(c + h, q.cols - 1);
    float s1 = 0.0f, s2 = 0.0f;
    for (int j = j0; j <= j1; ++j) {
        float v1 = 0.0f, v2 = 0.0f;
        for (int i = i0; i <= i1; ++i) {
            const float x = cached_load(q.grad + static_cast<int64_t>(i) * q.cols + j);
            v1 = add_rn(v1, x);
            v2 = add_rn(v2, mul_rn(x, x));
        }
        s1 = add_rn(s1, v1);
        s2 = add_rn(s2, v2);
    }
    const float n = static_cast<float>((i1 - i0 + 1) * (j1 - j0 + 1));
    const float mean = div_rn(s1, n);
    const float var = sub_rn(div_rn(s2, n), mul_rn(mean, mean));
    const float sd = sqrt_rn(var < 0.0f ? 0.0f : var);  // NaN stays NaN, as np.maximum
    const float am = fabsf(mean);
    if (q.variant == 1) {
        return add_rn(am, mul_rn(q.lam, sd));
    }
    const float den = add_rn(am, sd);
    const float rho = den > 0.0f ? div_rn(am, den) : 0.0f;
    const float w = add_rn(sub_rn(1.0f, q.beta), mul_rn(q.beta, rho));
    const float g = cached_load(q.grad + static_cast<int64_t>(r) * q.cols + c);
    return mul_rn(fabsf(g), w);
}

SATEDGE_HD unsigned float_bits(float f) {
#ifdef __CUDA_ARCH__
    return static_cast<unsigned>(__float_as_int(f));
#else
    unsigned u;
    __builtin_memcpy(&u, &f, sizeof u);
    return u;
#endif
}

SATEDGE_HD float bits_float(unsigned u) {
#ifdef __CUDA_ARCH__
    return __int_as_float(static_cast<int>(u));
#else
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
#endif
}

// Unsigned key with the order of the floats (-0 just below +0, NaN at the ends).
SATEDGE_HD unsigned order_key(float s) {
    const unsigned u = float_bits(s);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

SATEDGE_HD float key_value(unsigned key) { return bits_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key); }

// Radix-select state: candidates are the keys with (key & mask) == prefix;
// k_rem of them, counted from the largest, are still to be kept.
struct SelectState {
    unsigned prefix;
    unsigned mask;
    unsigned k_rem;
    unsigned pad;
};

// One step: given the 256-bin histogram of the candidates' digit at `shift`,
// fix that digit to the bin holding the k_rem-th largest candidate.
SATEDGE_HD void radix_pick(const unsigned *hist, int shift, SelectState &st) {
    unsigned above = 0;  // candidates in higher bins
    for (int b = 255; b >= 0; --b) {
        const unsigned h = hist[b];
        if (above + h >= st.k_rem) {
            st.prefix |= static_cast<unsigned>(b) << shift;
            st.mask |= 0xFFu << shift;
            st.k_rem -= above;
            return;
        }
        above += h;
    }
}

// After the four steps prefix is the threshold key T and k_rem the number of
// elements equal to T that are kept (the lowest-indexed ones). The output slot
// of a kept element is the number of kept elements before it.
SATEDGE_HD unsigned output_slot(unsigned gt_before, unsigned eq_before, unsigned k_eq) {
    return gt_before + (eq_before < k_eq ? eq_before : k_eq);
}

}  // namespace detail
}  // namespace satedge

#endif  // SATEDGE_NSI_ELEMENTS_CUH_

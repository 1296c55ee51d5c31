// plugins_ops_analytics.cpp - the OpSpecs (plugin_common.h) of the analysis
// ops: RxGlobal, RxLocal (RX anomaly score), NsiScore and NsiSparsify (RS-DGC
// gradient sparsification). Field ranges, type and shape rules, output
// shapes, workspace and the C ABI call; shared by the TensorRT 8.x
// (plugins_v2.cpp) and 10+ (plugins_v3.cpp) adapters. The argument rules
// repeat those of cuda/include/satedge_kernels.h so that a bad field fails
// when the engine is built, not when it runs. C++14.
#include "plugin_common.h"

namespace satedge_trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::IExprBuilder;
using nvinfer1::PluginTensorDesc;

bool noFieldsToCheck(FieldValues const&, ErrorText&) noexcept { return true; }

// ----------------------------------------------------------------------------
// RX: cube (B, H, W) -> score (H, W); global also takes mean (B), inv_cov (B, B)
char const kRg[] = "RxGlobal";
char const kRl[] = "RxLocal";
enum { kRlOuter, kRlInner, kRlRegularization };

bool cubeDims(char const* op, Dims const& cube, Dims const& score, ErrorText& err) noexcept {
    return rankIs(op, "cube", cube, 3, err) && rankIs(op, "score", score, 2, err) &&
           extentIs(op, "score", score, 0, cube.d[1], err) && extentIs(op, "score", score, 1, cube.d[2], err);
}

bool cubeScoreDims(FieldValues const&, int32_t, DimsExprs const* inputs, IExprBuilder&, DimsExprs& out,
                   ErrorText& err) noexcept {
    if (inputs[0].nbDims != 3) {
        setError(err, "RX: cube must have 3 dimensions (B, H, W), got %d", static_cast<int>(inputs[0].nbDims));
        return false;
    }
    out.nbDims = 2;
    out.d[0] = inputs[0].d[1];
    out.d[1] = inputs[0].d[2];
    return true;
}

bool cubeSize(char const* op, PluginTensorDesc const& cube, int& bands, int& height, int& width,
              ErrorText& err) noexcept {
    if (!asInt(cube.dims.d[0], bands) || !asInt(cube.dims.d[1], height) || !asInt(cube.dims.d[2], width)) {
        setError(err, "%s: cube dimensions are out of range", op);
        return false;
    }
    return true;
}

bool rgSupportsType(FieldValues const&, int32_t pos, DataType const* types) noexcept {
    return pos == 0 ? isFloatOrHalf(types[0]) : types[pos] == DataType::kFLOAT;
}

bool rgCheckDims(FieldValues const&, Dims const* in, Dims const* out, ErrorText& err) noexcept {
    int64_t const bands = in[0].nbDims == 3 ? in[0].d[0] : -1;
    return cubeDims(kRg, in[0], out[0], err) && rankIs(kRg, "mean", in[1], 1, err) &&
           extentIs(kRg, "mean", in[1], 0, bands, err) && rankIs(kRg, "inv_cov", in[2], 2, err) &&
           extentIs(kRg, "inv_cov", in[2], 0, bands, err) && extentIs(kRg, "inv_cov", in[2], 1, bands, err);
}

satedge_status rgEnqueue(FieldValues const&, PluginTensorDesc const* inDesc, PluginTensorDesc const*,
                         void const* const* inputs, void* const* outputs, void*, cudaStream_t stream,
                         ErrorText& err) noexcept {
    int bands = 0, height = 0, width = 0;
    if (!cubeSize(kRg, inDesc[0], bands, height, width, err)) {
        return SATEDGE_ERR_INVALID_ARG;
    }
    if (height == 0 || width == 0) {
        return SATEDGE_OK;    // empty score
    }
    return satedge_rx_global(inputs[0], dtypeOf(inDesc[0].type), bands, height, width,
                             static_cast<float const*>(inputs[1]), static_cast<float const*>(inputs[2]),
                             static_cast<float*>(outputs[0]), stream);
}

bool rlCheckFields(FieldValues const& v, ErrorText& err) noexcept {
    int32_t const outer = v.i[kRlOuter], inner = v.i[kRlInner];
    if (outer % 2 == 0 || inner % 2 == 0 || inner < 1 || inner >= outer || outer > 255) {
        setError(err, "%s: windows must be odd with 0 < inner < outer <= 255, got outer=%d inner=%d", kRl, outer,
                 inner);
        return false;
    }
    if (!(v.f[kRlRegularization] >= 0.0f)) {
        setError(err, "%s: regularization must be >= 0, got %g", kRl, static_cast<double>(v.f[kRlRegularization]));
        return false;
    }
    return true;
}

bool rlCheckDims(FieldValues const& v, Dims const* in, Dims const* out, ErrorText& err) noexcept {
    if (!cubeDims(kRl, in[0], out[0], err)) {
        return false;
    }
    int64_t const bands = in[0].d[0];
    int64_t const background = static_cast<int64_t>(v.i[kRlOuter]) * v.i[kRlOuter] -
                               static_cast<int64_t>(v.i[kRlInner]) * v.i[kRlInner];
    if (bands > SATEDGE_RX_LOCAL_MAX_BANDS || (bands >= 0 && background <= bands)) {
        setError(err, "%s: %lld bands: need at most %d bands and more background pixels (%lld) than bands", kRl,
                 static_cast<long long>(bands), SATEDGE_RX_LOCAL_MAX_BANDS, static_cast<long long>(background));
        return false;
    }
    return true;
}

satedge_status rlEnqueue(FieldValues const& v, PluginTensorDesc const* inDesc, PluginTensorDesc const*,
                         void const* const* inputs, void* const* outputs, void*, cudaStream_t stream,
                         ErrorText& err) noexcept {
    int bands = 0, height = 0, width = 0;
    if (!cubeSize(kRl, inDesc[0], bands, height, width, err)) {
        return SATEDGE_ERR_INVALID_ARG;
    }
    if (height == 0 || width == 0) {
        return SATEDGE_OK;    // empty score
    }
    return satedge_rx_local(inputs[0], dtypeOf(inDesc[0].type), bands, height, width, v.i[kRlOuter],
                            v.i[kRlInner], v.f[kRlRegularization], static_cast<float*>(outputs[0]), stream);
}

// ----------------------------------------------------------------------------
// NSI: grad (rows, cols) -> score (rows, cols), or index (k), value (k), threshold (1)
char const kNs[] = "NsiScore";
char const kNp[] = "NsiSparsify";
enum { kNsP, kNsBeta, kNsLam, kNsVariant };                     // NsiScore
enum { kNpK, kNpP, kNpBeta, kNpLam, kNpVariant };               // NsiSparsify

bool nsiCheck(char const* op, int32_t p, float beta, int32_t variant, ErrorText& err) noexcept {
    if (p < 1 || p > 255 || p % 2 == 0) {
        setError(err, "%s: window side p must be odd, 1 <= p <= 255, got %d", op, p);
        return false;
    }
    if (variant != SATEDGE_NSI_COHERENCE && variant != SATEDGE_NSI_MEAN_STD) {
        setError(err, "%s: variant must be 0 (coherence) or 1 (mean_std), got %d", op, variant);
        return false;
    }
    if (variant == SATEDGE_NSI_COHERENCE && !(beta >= 0.0f && beta <= 1.0f)) {
        setError(err, "%s: beta must be in [0, 1], got %g", op, static_cast<double>(beta));
        return false;
    }
    return true;
}

bool gradDims(char const* op, Dims const& grad, ErrorText& err) noexcept {
    if (!rankIs(op, "grad", grad, 2, err)) {
        return false;
    }
    // d0 * d1 > kInt32Max without computing the product: it would overflow the int32_t extents of
    // TensorRT 8.x (and could overflow int64_t ones).
    if (grad.d[0] > 0 && grad.d[1] > 0 && grad.d[1] > kInt32Max / grad.d[0]) {
        setError(err, "%s: grad has 2^31 or more elements", op);
        return false;
    }
    return true;
}

bool gradSize(char const* op, PluginTensorDesc const& grad, int& rows, int& cols, ErrorText& err) noexcept {
    if (!asInt(grad.dims.d[0], rows) || !asInt(grad.dims.d[1], cols)) {
        setError(err, "%s: grad dimensions are out of range", op);
        return false;
    }
    return true;
}

bool nsCheckFields(FieldValues const& v, ErrorText& err) noexcept {
    return nsiCheck(kNs, v.i[kNsP], v.f[kNsBeta], v.i[kNsVariant], err);
}

bool allFloat(FieldValues const&, int32_t pos, DataType const* types) noexcept {
    return types[pos] == DataType::kFLOAT;
}

bool nsOutputDims(FieldValues const&, int32_t, DimsExprs const* inputs, IExprBuilder&, DimsExprs& out,
                  ErrorText&) noexcept {
    out = inputs[0];
    return true;
}

bool nsCheckDims(FieldValues const&, Dims const* in, Dims const* out, ErrorText& err) noexcept {
    return gradDims(kNs, in[0], err) && rankIs(kNs, "score", out[0], 2, err) &&
           extentIs(kNs, "score", out[0], 0, in[0].d[0], err) && extentIs(kNs, "score", out[0], 1, in[0].d[1], err);
}

satedge_status nsEnqueue(FieldValues const& v, PluginTensorDesc const* inDesc, PluginTensorDesc const*,
                         void const* const* inputs, void* const* outputs, void*, cudaStream_t stream,
                         ErrorText& err) noexcept {
    int rows = 0, cols = 0;
    if (!gradSize(kNs, inDesc[0], rows, cols, err)) {
        return SATEDGE_ERR_INVALID_ARG;
    }
    if (rows == 0 || cols == 0) {
        return SATEDGE_OK;    // empty score
    }
    return satedge_nsi_score(static_cast<float const*>(inputs[0]), rows, cols, v.i[kNsP], v.f[kNsBeta],
                             v.f[kNsLam], static_cast<satedge_nsi_variant>(v.i[kNsVariant]),
                             static_cast<float*>(outputs[0]), stream);
}

bool npCheckFields(FieldValues const& v, ErrorText& err) noexcept {
    if (v.i[kNpK] < 1) {
        setError(err, "%s: k must be >= 1, got %d", kNp, v.i[kNpK]);
        return false;
    }
    return nsiCheck(kNp, v.i[kNpP], v.f[kNpBeta], v.i[kNpVariant], err);
}

bool npSupportsType(FieldValues const&, int32_t pos, DataType const* types) noexcept {
    return types[pos] == (pos == 1 ? DataType::kINT32 : DataType::kFLOAT);    // grad; index; value; threshold
}

DataType npOutputType(FieldValues const&, int32_t index, DataType const*) noexcept {
    return index == 0 ? DataType::kINT32 : DataType::kFLOAT;
}

bool npOutputDims(FieldValues const& v, int32_t index, DimsExprs const*, IExprBuilder& b, DimsExprs& out,
                  ErrorText&) noexcept {
    out.nbDims = 1;
    out.d[0] = b.constant(index == 2 ? 1 : v.i[kNpK]);
    return true;
}

bool npCheckDims(FieldValues const& v, Dims const* in, Dims const* out, ErrorText& err) noexcept {
    if (!gradDims(kNp, in[0], err)) {
        return false;
    }
    // int64_t: int32_t extents before TensorRT 10; gradDims bounded the product of known extents.
    int64_t const elements = static_cast<int64_t>(in[0].d[0]) * in[0].d[1];
    if (in[0].d[0] >= 0 && in[0].d[1] >= 0 && elements < v.i[kNpK]) {
        setError(err, "%s: k = %d is more than the %lld gradient elements", kNp, v.i[kNpK],
                 static_cast<long long>(elements));
        return false;
    }
    return rankIs(kNp, "index", out[0], 1, err) && extentIs(kNp, "index", out[0], 0, v.i[kNpK], err) &&
           rankIs(kNp, "value", out[1], 1, err) && extentIs(kNp, "value", out[1], 0, v.i[kNpK], err) &&
           rankIs(kNp, "threshold", out[2], 1, err) && extentIs(kNp, "threshold", out[2], 0, 1, err);
}

size_t npWorkspace(FieldValues const&, Dims const* in) noexcept {
    int rows = 0, cols = 0;
    if (in[0].nbDims != 2 || !asInt(in[0].d[0], rows) || !asInt(in[0].d[1], cols)) {
        return 0;
    }
    return satedge_nsi_sparsify_workspace_size(rows, cols);
}

satedge_status npEnqueue(FieldValues const& v, PluginTensorDesc const* inDesc, PluginTensorDesc const*,
                         void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream,
                         ErrorText& err) noexcept {
    int rows = 0, cols = 0;
    if (!gradSize(kNp, inDesc[0], rows, cols, err)) {
        return SATEDGE_ERR_INVALID_ARG;
    }
    size_t const bytes = satedge_nsi_sparsify_workspace_size(rows, cols);
    return satedge_nsi_sparsify(static_cast<float const*>(inputs[0]), rows, cols, v.i[kNpP], v.f[kNpBeta],
                                v.f[kNpLam], static_cast<satedge_nsi_variant>(v.i[kNpVariant]), v.i[kNpK],
                                workspace, bytes, static_cast<int32_t*>(outputs[0]), static_cast<float*>(outputs[1]),
                                static_cast<float*>(outputs[2]), stream);
}

}  // namespace

constexpr OpSpec kRxGlobalOp = {kRg, nullptr, 0, 3, 1, noFieldsToCheck, rgSupportsType, floatOutput,
                                cubeScoreDims, rgCheckDims, nullptr, rgEnqueue};
constexpr OpSpec kRxLocalOp = {kRl, kRxLocalFields, fieldCount(kRxLocalFields), 1, 1, rlCheckFields, rgSupportsType,
                               floatOutput, cubeScoreDims, rlCheckDims, nullptr, rlEnqueue};
constexpr OpSpec kNsiScoreOp = {kNs, kNsiScoreFields, fieldCount(kNsiScoreFields), 1, 1, nsCheckFields, allFloat,
                                floatOutput, nsOutputDims, nsCheckDims, nullptr, nsEnqueue};
constexpr OpSpec kNsiSparsifyOp = {kNp, kNsiSparsifyFields, fieldCount(kNsiSparsifyFields), 1, 3, npCheckFields,
                                   npSupportsType, npOutputType, npOutputDims, npCheckDims, npWorkspace, npEnqueue};

}  // namespace satedge_trt

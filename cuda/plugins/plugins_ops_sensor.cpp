// plugins_ops_sensor.cpp - the OpSpecs (plugin_common.h) of the sensor-side
// ops: PreprocessU12 and CloudFraction. Field ranges, type and shape rules,
// output shapes and the C ABI call; shared by the TensorRT 8.x
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

// Packed 12-bit bytes: TensorRT 8.5+ kUINT8; before, only kINT8 holds raw bytes.
bool isRawByte(DataType t) noexcept {
#if SATEDGE_TRT_HAS_UINT8
    return t == DataType::kUINT8;
#else
    return t == DataType::kINT8;
#endif
}

// A cloud mask: bytes, any nonzero is cloud.
bool isMaskByte(DataType t) noexcept {
#if SATEDGE_TRT_HAS_UINT8
    return t == DataType::kUINT8 || t == DataType::kBOOL;
#else
    return t == DataType::kBOOL;
#endif
}

// ----------------------------------------------------------------------------
// PreprocessU12: src (packed bytes), dark, gain, scale, offset -> y (B, tile_h, tile_w)
enum { kPpBands, kPpHeight, kPpWidth, kPpX0, kPpY0, kPpTileH, kPpTileW, kPpDtype };
char const kPp[] = "PreprocessU12";

int64_t packedBytes(FieldValues const& v) noexcept {
    int64_t const pixels = static_cast<int64_t>(v.i[kPpBands]) * v.i[kPpHeight] * v.i[kPpWidth];
    return (3 * pixels + 1) / 2;
}

bool ppCheckFields(FieldValues const& v, ErrorText& err) noexcept {
    if (v.i[kPpBands] < 1 || v.i[kPpHeight] < 1 || v.i[kPpWidth] < 1 || v.i[kPpTileH] < 0 || v.i[kPpTileW] < 0) {
        setError(err, "%s: need bands, height, width >= 1 and tile_h, tile_w >= 0 (got %d, %d, %d, %d, %d)", kPp,
                 v.i[kPpBands], v.i[kPpHeight], v.i[kPpWidth], v.i[kPpTileH], v.i[kPpTileW]);
        return false;
    }
    if (v.i[kPpDtype] != SATEDGE_DTYPE_FLOAT32 && v.i[kPpDtype] != SATEDGE_DTYPE_FLOAT16) {
        setError(err, "%s: dtype must be 0 (float32) or 1 (float16), got %d", kPp, v.i[kPpDtype]);
        return false;
    }
    int64_t const outElems = static_cast<int64_t>(v.i[kPpBands]) * v.i[kPpTileH] * v.i[kPpTileW];
    if (packedBytes(v) > kInt32Max || outElems > kInt32Max) {
        setError(err, "%s: the frame (%lld bytes) or the tile (%lld values) is larger than 2^31 - 1", kPp,
                 static_cast<long long>(packedBytes(v)), static_cast<long long>(outElems));
        return false;
    }
    return true;
}

bool ppSupportsType(FieldValues const& v, int32_t pos, DataType const* types) noexcept {
    if (pos == 0) {
        return isRawByte(types[0]);
    }
    if (pos <= 4) {
        return types[pos] == DataType::kFLOAT;
    }
    return types[pos] == (v.i[kPpDtype] == SATEDGE_DTYPE_FLOAT16 ? DataType::kHALF : DataType::kFLOAT);
}

DataType ppOutputType(FieldValues const& v, int32_t, DataType const*) noexcept {
    return v.i[kPpDtype] == SATEDGE_DTYPE_FLOAT16 ? DataType::kHALF : DataType::kFLOAT;
}

bool ppOutputDims(FieldValues const& v, int32_t, DimsExprs const*, IExprBuilder& b, DimsExprs& out,
                  ErrorText&) noexcept {
    out.nbDims = 3;
    out.d[0] = b.constant(v.i[kPpBands]);
    out.d[1] = b.constant(v.i[kPpTileH]);
    out.d[2] = b.constant(v.i[kPpTileW]);
    return true;
}

bool ppCheckDims(FieldValues const& v, Dims const* in, Dims const* out, ErrorText& err) noexcept {
    static char const* const names[] = {"src", "dark", "gain", "scale", "offset"};
    if (!rankIs(kPp, names[0], in[0], 1, err) || !extentIs(kPp, names[0], in[0], 0, packedBytes(v), err)) {
        return false;
    }
    for (int32_t c = 1; c <= 4; ++c) {
        if (!rankIs(kPp, names[c], in[c], 1, err) || !extentIs(kPp, names[c], in[c], 0, v.i[kPpBands], err)) {
            return false;
        }
    }
    return rankIs(kPp, "y", out[0], 3, err) && extentIs(kPp, "y", out[0], 0, v.i[kPpBands], err) &&
           extentIs(kPp, "y", out[0], 1, v.i[kPpTileH], err) && extentIs(kPp, "y", out[0], 2, v.i[kPpTileW], err);
}

satedge_status ppEnqueue(FieldValues const& v, PluginTensorDesc const*, PluginTensorDesc const* outDesc,
                         void const* const* inputs, void* const* outputs, void*, cudaStream_t stream,
                         ErrorText& err) noexcept {
    satedge_dtype const dtype = static_cast<satedge_dtype>(v.i[kPpDtype]);
    if (dtypeOf(outDesc[0].type) != dtype) {
        setError(err, "%s: output type does not match dtype %d", kPp, v.i[kPpDtype]);
        return SATEDGE_ERR_INVALID_ARG;
    }
    if (v.i[kPpTileH] == 0 || v.i[kPpTileW] == 0) {
        return SATEDGE_OK;    // empty output (TensorRT may give it a null address)
    }
    return satedge_preprocess_u12packed(
        static_cast<uint8_t const*>(inputs[0]), v.i[kPpBands], v.i[kPpHeight], v.i[kPpWidth], v.i[kPpX0],
        v.i[kPpY0], v.i[kPpTileH], v.i[kPpTileW], static_cast<float const*>(inputs[1]),
        static_cast<float const*>(inputs[2]), static_cast<float const*>(inputs[3]),
        static_cast<float const*>(inputs[4]), outputs[0], dtype, stream);
}

// ----------------------------------------------------------------------------
// CloudFraction: mask (N, tile_pixels) -> fraction (N)
char const kCf[] = "CloudFraction";

bool cfCheckFields(FieldValues const& v, ErrorText& err) noexcept {
    if (v.i[0] < 1) {
        setError(err, "%s: tile_pixels must be >= 1, got %d", kCf, v.i[0]);
        return false;
    }
    return true;
}

bool cfSupportsType(FieldValues const&, int32_t pos, DataType const* types) noexcept {
    return pos == 0 ? isMaskByte(types[0]) : types[pos] == DataType::kFLOAT;
}

bool cfOutputDims(FieldValues const&, int32_t, DimsExprs const* inputs, IExprBuilder&, DimsExprs& out,
                  ErrorText& err) noexcept {
    if (inputs[0].nbDims != 2) {
        setError(err, "%s: mask must have 2 dimensions (N, tile_pixels), got %d", kCf,
                 static_cast<int>(inputs[0].nbDims));
        return false;
    }
    out.nbDims = 1;
    out.d[0] = inputs[0].d[0];
    return true;
}

bool cfCheckDims(FieldValues const& v, Dims const* in, Dims const* out, ErrorText& err) noexcept {
    return rankIs(kCf, "mask", in[0], 2, err) && extentIs(kCf, "mask", in[0], 1, v.i[0], err) &&
           rankIs(kCf, "fraction", out[0], 1, err) && extentIs(kCf, "fraction", out[0], 0, in[0].d[0], err);
}

satedge_status cfEnqueue(FieldValues const& v, PluginTensorDesc const* inDesc, PluginTensorDesc const*,
                         void const* const* inputs, void* const* outputs, void*, cudaStream_t stream,
                         ErrorText& err) noexcept {
    int n = 0;
    if (!asInt(inDesc[0].dims.d[0], n)) {
        setError(err, "%s: tile count %lld is out of range", kCf, static_cast<long long>(inDesc[0].dims.d[0]));
        return SATEDGE_ERR_INVALID_ARG;
    }
    if (n == 0) {
        return SATEDGE_OK;    // no tiles (TensorRT may give empty tensors a null address)
    }
    return satedge_cloud_fraction(static_cast<uint8_t const*>(inputs[0]), n, v.i[0],
                                  static_cast<float*>(outputs[0]), stream);
}

}  // namespace

constexpr OpSpec kPreprocessU12Op = {kPp, kPreprocessU12Fields, fieldCount(kPreprocessU12Fields), 5, 1,
                                     ppCheckFields, ppSupportsType, ppOutputType, ppOutputDims, ppCheckDims,
                                     nullptr, ppEnqueue};
constexpr OpSpec kCloudFractionOp = {kCf, kCloudFractionFields, fieldCount(kCloudFractionFields), 1, 1,
                                     cfCheckFields, cfSupportsType, floatOutput, cfOutputDims, cfCheckDims,
                                     nullptr, cfEnqueue};

}  // namespace satedge_trt

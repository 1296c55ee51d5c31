/*
 * plugin_common.h - what the TensorRT 8.x (plugins_v2.cpp) and 10+
 * (plugins_v3.cpp) adapters share: one OpSpec per op (fields, type and shape
 * rules, output shapes, workspace, enqueue through the C ABI), defined in
 * plugins_ops_sensor.cpp and plugins_ops_analytics.cpp, and error reporting.
 *
 * Each adapter is a single non-template class that holds an OpSpec and the
 * op's FieldValues, so a new op is one OpSpec in a plugins_ops_*.cpp file,
 * its entry in allOps() and one k<Name>Fields array in plugin_fields.h.
 *
 * C++14; compiles against the TensorRT 8.x and 10.x headers.
 */
#ifndef SATEDGE_TRT_PLUGIN_COMMON_H_
#define SATEDGE_TRT_PLUGIN_COMMON_H_

#include <NvInferRuntime.h>

#include <cstddef>
#include <cstdint>

#include "plugin_fields.h"
#include "satedge_kernels.h"

/* kUINT8 tensors appeared in TensorRT 8.5 (8.4 has kFLOAT, kHALF, kINT8, kINT32, kBOOL). */
#if NV_TENSORRT_MAJOR > 8 || (NV_TENSORRT_MAJOR == 8 && NV_TENSORRT_MINOR >= 5)
#define SATEDGE_TRT_HAS_UINT8 1
#else
#define SATEDGE_TRT_HAS_UINT8 0
#endif

/* IPluginRegistry::loadLibrary and ILoggerFinder / setLoggerFinder: TensorRT 8.6+. */
#if NV_TENSORRT_MAJOR > 8 || (NV_TENSORRT_MAJOR == 8 && NV_TENSORRT_MINOR >= 6)
#define SATEDGE_TRT_HAS_LOAD_LIBRARY 1
#else
#define SATEDGE_TRT_HAS_LOAD_LIBRARY 0
#endif

/* The library is built with hidden visibility; these are its entry points. */
#if defined(__GNUC__)
#define SATEDGE_TRT_EXPORT __attribute__((visibility("default")))
#else
#define SATEDGE_TRT_EXPORT
#endif

namespace satedge_trt {

/** Most inputs + outputs of any op (PreprocessU12: 5 + 1; NsiSparsify: 1 + 3). */
static const int32_t kMaxTensors = 8;

/**
 * One op: everything that does not depend on the plugin interface version.
 * Dimensions passed to checkDims may hold -1 (unknown at build time); the
 * checks compare only known extents. The functions never throw or allocate
 * (their pointer types carry no noexcept: C++17 made it part of the type).
 */
struct OpSpec {
    char const* name;          /**< plugin name = ONNX op_type */
    FieldSpec const* fields;   /**< k<Name>Fields, or nullptr */
    int32_t nbFields;
    int32_t nbInputs;
    int32_t nbOutputs;
    /** Range checks of the field values (creator, deserialisation). */
    bool (*checkFields)(FieldValues const& v, ErrorText& err);
    /** Whether tensor `pos` (inputs first, then outputs) may have type
     *  types[pos], given the types already chosen for 0..pos-1. */
    bool (*supportsType)(FieldValues const& v, int32_t pos, nvinfer1::DataType const* types);
    /** Output type `index` for the given input types. */
    nvinfer1::DataType (*outputType)(FieldValues const& v, int32_t index, nvinfer1::DataType const* inputTypes);
    /** Output shape `index` as expressions of the input shapes and fields. */
    bool (*outputDims)(FieldValues const& v, int32_t index, nvinfer1::DimsExprs const* inputs,
                       nvinfer1::IExprBuilder& builder, nvinfer1::DimsExprs& out, ErrorText& err);
    /** Ranks and extents of inputs and outputs (-1 = unknown). */
    bool (*checkDims)(FieldValues const& v, nvinfer1::Dims const* in, nvinfer1::Dims const* out,
                      ErrorText& err);
    /** Device workspace in bytes for inputs of (at most) these dims; nullptr = none. */
    size_t (*workspaceSize)(FieldValues const& v, nvinfer1::Dims const* in);
    /** Runs the op through the C ABI on `stream`. */
    satedge_status (*enqueue)(FieldValues const& v, nvinfer1::PluginTensorDesc const* inDesc,
                              nvinfer1::PluginTensorDesc const* outDesc, void const* const* inputs,
                              void* const* outputs, void* workspace, cudaStream_t stream, ErrorText& err);
};

/** The ops with a plugin (plugins_ops_sensor.cpp, plugins_ops_analytics.cpp; PreprocessU16 has none).
 *  Defined constexpr (constant initialisation), so the static registration of plugins_v2.cpp
 *  (TensorRT < 8.6) may use them whatever the order of the files' dynamic initialisation. */
extern OpSpec const kPreprocessU12Op;
extern OpSpec const kCloudFractionOp;
extern OpSpec const kRxGlobalOp;
extern OpSpec const kRxLocalOp;
extern OpSpec const kNsiScoreOp;
extern OpSpec const kNsiSparsifyOp;

/** All of them, in plugin_fields.h order. */
static const int32_t kNbOps = 6;
OpSpec const* const* allOps() noexcept;

// ---- Helpers for the op definitions --------------------------------------

static const int64_t kInt32Max = 2147483647;

/** Number of fields of a k<Name>Fields array. */
template <size_t N>
constexpr int32_t fieldCount(FieldSpec const (&)[N]) noexcept {
    return static_cast<int32_t>(N);
}

/** Tensor `tensor` of op `op` must have rank `rank`. */
inline bool rankIs(char const* op, char const* tensor, nvinfer1::Dims const& d, int32_t rank, ErrorText& err) noexcept {
    if (d.nbDims != rank) {
        setError(err, "%s: %s must have %d dimension(s), got %d", op, tensor, static_cast<int>(rank),
                 static_cast<int>(d.nbDims));
        return false;
    }
    return true;
}

/** Extent `axis` of d must be `want`; unknown (-1) extents on either side pass. */
inline bool extentIs(char const* op, char const* tensor, nvinfer1::Dims const& d, int32_t axis, int64_t want,
                     ErrorText& err) noexcept {
    int64_t const got = d.d[axis];
    if (got >= 0 && want >= 0 && got != want) {
        setError(err, "%s: %s dimension %d is %lld, expected %lld", op, tensor, static_cast<int>(axis),
                 static_cast<long long>(got), static_cast<long long>(want));
        return false;
    }
    return true;
}

/** A runtime extent as the C ABI's int (false when negative or >= 2^31). */
inline bool asInt(int64_t value, int& out) noexcept {
    if (value < 0 || value > kInt32Max) {
        return false;
    }
    out = static_cast<int>(value);
    return true;
}

inline bool isFloatOrHalf(nvinfer1::DataType t) noexcept {
    return t == nvinfer1::DataType::kFLOAT || t == nvinfer1::DataType::kHALF;
}

inline satedge_dtype dtypeOf(nvinfer1::DataType t) noexcept {
    return t == nvinfer1::DataType::kHALF ? SATEDGE_DTYPE_FLOAT16 : SATEDGE_DTYPE_FLOAT32;
}

inline nvinfer1::DataType floatOutput(FieldValues const&, int32_t, nvinfer1::DataType const*) noexcept {
    return nvinfer1::DataType::kFLOAT;
}

/**
 * Reports an error: to `recorder` when not null, else to the plugin
 * registry's error recorder when it has one, and always to the TensorRT
 * logger (the one of the caller through the ILoggerFinder given to
 * setLoggerFinder, TensorRT 8.6+, else getLogger()); to stderr when there is
 * no logger. The message is prefixed with "satedge::".
 */
void reportError(nvinfer1::IErrorRecorder* recorder, nvinfer1::ErrorCode code, char const* message) noexcept;

/** Logs a message at the given severity (no error recorder). */
void logMessage(nvinfer1::ILogger::Severity severity, char const* message) noexcept;

/** Fills `names` (kMaxFields entries) and `fc` with the op's field names and types, for getFieldNames(). */
void describeFields(OpSpec const& op, nvinfer1::PluginField* names, nvinfer1::PluginFieldCollection& fc) noexcept;

/** Reads and range-checks an op's fields (creators); false with a message in `err`. */
bool parseFields(OpSpec const& op, nvinfer1::PluginFieldCollection const* fc, FieldValues& out,
                 ErrorText& err) noexcept;

/**
 * supportsFormatCombination for both interfaces: linear format only, and the
 * op's type rule for tensor `pos`. types/formats hold entries 0..pos.
 */
bool supportsAt(OpSpec const& op, FieldValues const& v, int32_t pos, nvinfer1::DataType const* types,
                nvinfer1::TensorFormat const* formats, int32_t nbInputs, int32_t nbOutputs) noexcept;

/** Counts and dims check (configurePlugin / onShapeChange / supportsFormatCombination). */
bool checkTensors(OpSpec const& op, FieldValues const& v, nvinfer1::Dims const* in, int32_t nbInputs,
                  nvinfer1::Dims const* out, int32_t nbOutputs, ErrorText& err) noexcept;

/** Workspace size for both interfaces (0 for counts that do not match). */
size_t workspaceFor(OpSpec const& op, FieldValues const& v, nvinfer1::Dims const* in, int32_t nbInputs) noexcept;

/**
 * enqueue for both interfaces: runs the op; on a status other than
 * SATEDGE_OK reports satedge_status_string (and the raw cudaError_t) and
 * returns -1, else 0.
 */
int32_t enqueueOp(OpSpec const& op, FieldValues const& v, nvinfer1::PluginTensorDesc const* inDesc,
                  nvinfer1::PluginTensorDesc const* outDesc, void const* const* inputs, void* const* outputs,
                  void* workspace, cudaStream_t stream, nvinfer1::IErrorRecorder* recorder) noexcept;

}  // namespace satedge_trt

#endif  // SATEDGE_TRT_PLUGIN_COMMON_H_

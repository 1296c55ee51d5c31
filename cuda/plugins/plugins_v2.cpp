// plugins_v2.cpp - TensorRT 8.x plugins: IPluginV2DynamicExt and one
// IPluginCreator per op (plugin_common.h: the op rules are shared with the
// TensorRT 10+ adapter of plugins_v3.cpp). CMake builds this file only
// against TensorRT < 10; it also compiles against the 10.x headers, where
// these interfaces still exist, deprecated (warnings silenced locally).
//
// Registration:
//   TensorRT 8.6 - 9.x: IPluginRegistry::loadLibrary (Python:
//     registry.load_library; trtexec --dynamicPlugins=...) calls
//     setLoggerFinder (plugins_common.cpp) and getPluginCreators below.
//   TensorRT 8.2 - 8.5 (no loadLibrary; JetPack 4.6 has 8.2): loading the
//     library (ctypes.CDLL(..., RTLD_GLOBAL), trtexec --plugins=...) runs the
//     static registration below. It does what REGISTER_TENSORRT_PLUGIN does,
//     but that macro registers under the empty namespace and the ONNX parser
//     looks the plugins up under plugin_namespace "satedge", so each creator
//     is registered with registerCreator(creator, "satedge") instead.
//
// Fields are serialised as: uint32 magic "SEDG", uint32 format 1, int32 field
// count, then each field's 4 bytes (int32 or float) in declaration order.
// C++14 (gcc 7 on JetPack 4.6): no C++17 features.
#include "plugin_common.h"

// TensorRT 11 drops the deprecated IPluginV2 registry methods; this file is for 8.x (and checked against 10.x).
#if NV_TENSORRT_MAJOR < 11

#include <new>
#include <string>

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif

namespace satedge_trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginTensorDesc;

uint32_t const kSerialMagic = 0x47444553u;    // "SEDG" in little-endian byte order
uint32_t const kSerialFormat = 1u;
size_t const kSerialHeader = 3 * sizeof(uint32_t);

size_t serialSize(OpSpec const& op) noexcept { return kSerialHeader + 4u * static_cast<size_t>(op.nbFields); }

void serializeFields(OpSpec const& op, FieldValues const& v, void* buffer) noexcept {
    char* p = static_cast<char*>(buffer);
    int32_t const count = op.nbFields;
    std::memcpy(p, &kSerialMagic, 4);
    std::memcpy(p + 4, &kSerialFormat, 4);
    std::memcpy(p + 8, &count, 4);
    p += kSerialHeader;
    for (int32_t j = 0; j < count; ++j, p += 4) {
        bool const isInt = op.fields[j].type == nvinfer1::PluginFieldType::kINT32;
        std::memcpy(p, isInt ? static_cast<void const*>(&v.i[j]) : static_cast<void const*>(&v.f[j]), 4);
    }
}

bool deserializeFields(OpSpec const& op, void const* data, size_t length, FieldValues& v, ErrorText& err) noexcept {
    std::memset(&v, 0, sizeof(v));
    uint32_t magic = 0, format = 0;
    int32_t count = -1;
    char const* p = static_cast<char const*>(data);
    if (p != nullptr && length >= kSerialHeader) {
        std::memcpy(&magic, p, 4);
        std::memcpy(&format, p + 4, 4);
        std::memcpy(&count, p + 8, 4);
    }
    if (magic != kSerialMagic || format != kSerialFormat || count != op.nbFields || length != serialSize(op)) {
        setError(err, "%s: serialised plugin data is not from this library version (%zu bytes)", op.name, length);
        return false;
    }
    p += kSerialHeader;
    for (int32_t j = 0; j < count; ++j, p += 4) {
        bool const isInt = op.fields[j].type == nvinfer1::PluginFieldType::kINT32;
        std::memcpy(isInt ? static_cast<void*>(&v.i[j]) : static_cast<void*>(&v.f[j]), p, 4);
    }
    return op.checkFields(v, err);
}

class PluginV2 final : public nvinfer1::IPluginV2DynamicExt {
public:
    PluginV2(OpSpec const& op, FieldValues const& values, char const* pluginNamespace)
        : mOp(&op), mValues(values), mNamespace(pluginNamespace) {}

    // IPluginV2
    char const* getPluginType() const noexcept override { return mOp->name; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    int32_t getNbOutputs() const noexcept override { return mOp->nbOutputs; }
    int32_t initialize() noexcept override { return 0; }
    void terminate() noexcept override {}
    size_t getSerializationSize() const noexcept override { return serialSize(*mOp); }
    void serialize(void* buffer) const noexcept override {
        if (buffer != nullptr) {
            serializeFields(*mOp, mValues, buffer);
        }
    }
    void destroy() noexcept override { delete this; }
    void setPluginNamespace(char const* pluginNamespace) noexcept override {
        try {
            mNamespace = pluginNamespace != nullptr ? pluginNamespace : "";
        } catch (...) {
            // keep the previous namespace (out of host memory)
        }
    }
    char const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

    // IPluginV2Ext
    DataType getOutputDataType(int32_t index, DataType const* inputTypes, int32_t nbInputs) const noexcept override {
        if (index < 0 || index >= mOp->nbOutputs || inputTypes == nullptr || nbInputs != mOp->nbInputs) {
            return DataType::kFLOAT;
        }
        return mOp->outputType(mValues, index, inputTypes);
    }

    // IPluginV2DynamicExt
    nvinfer1::IPluginV2DynamicExt* clone() const noexcept override {
        try {
            return new PluginV2(*this);
        } catch (...) {
            return nullptr;
        }
    }

    DimsExprs getOutputDimensions(int32_t outputIndex, DimsExprs const* inputs, int32_t nbInputs,
                                  nvinfer1::IExprBuilder& exprBuilder) noexcept override {
        DimsExprs out{};    // rank 0 on error: supportsFormatCombination then refuses every combination
        ErrorText err;
        if (inputs == nullptr || nbInputs != mOp->nbInputs || outputIndex < 0 || outputIndex >= mOp->nbOutputs) {
            setError(err, "%s: getOutputDimensions: wrong number of inputs or output index", mOp->name);
            reportError(nullptr, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);
        } else if (!mOp->outputDims(mValues, outputIndex, inputs, exprBuilder, out, err)) {
            reportError(nullptr, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);
            out = DimsExprs{};
        }
        return out;
    }

    bool supportsFormatCombination(int32_t pos, PluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        if (inOut == nullptr || pos < 0 || pos >= kMaxTensors) {
            return false;
        }
        DataType types[kMaxTensors];
        nvinfer1::TensorFormat formats[kMaxTensors];
        for (int32_t t = 0; t <= pos; ++t) {
            types[t] = inOut[t].type;
            formats[t] = inOut[t].format;
        }
        if (!supportsAt(*mOp, mValues, pos, types, formats, nbInputs, nbOutputs)) {
            return false;
        }
        // configurePlugin cannot fail in this interface: refuse bad shapes here, once all of inOut is set.
        if (pos == nbInputs + nbOutputs - 1) {
            nvinfer1::Dims in[kMaxTensors];
            nvinfer1::Dims out[kMaxTensors];
            for (int32_t t = 0; t < nbInputs; ++t) {
                in[t] = inOut[t].dims;
            }
            for (int32_t t = 0; t < nbOutputs; ++t) {
                out[t] = inOut[nbInputs + t].dims;
            }
            ErrorText err;
            if (!checkTensors(*mOp, mValues, in, nbInputs, out, nbOutputs, err)) {
                if (!mShapeErrorReported) {
                    mShapeErrorReported = true;
                    reportError(nullptr, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);
                }
                return false;
            }
        }
        return true;
    }

    void configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                         int32_t nbOutputs) noexcept override {
        if (in == nullptr || out == nullptr || nbInputs < 0 || nbInputs > kMaxTensors || nbOutputs < 0 ||
            nbOutputs > kMaxTensors) {
            return;
        }
        nvinfer1::Dims inDims[kMaxTensors];
        nvinfer1::Dims outDims[kMaxTensors];
        for (int32_t t = 0; t < nbInputs; ++t) {
            inDims[t] = in[t].desc.dims;
        }
        for (int32_t t = 0; t < nbOutputs; ++t) {
            outDims[t] = out[t].desc.dims;
        }
        ErrorText err;
        if (!checkTensors(*mOp, mValues, inDims, nbInputs, outDims, nbOutputs, err)) {
            reportError(nullptr, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);    // enqueue refuses too
        }
    }

    size_t getWorkspaceSize(PluginTensorDesc const* inputs, int32_t nbInputs, PluginTensorDesc const*,
                            int32_t) const noexcept override {
        if (inputs == nullptr || nbInputs < 0 || nbInputs > kMaxTensors) {
            return 0;
        }
        nvinfer1::Dims dims[kMaxTensors];
        for (int32_t t = 0; t < nbInputs; ++t) {
            dims[t] = inputs[t].dims;
        }
        return workspaceFor(*mOp, mValues, dims, nbInputs);
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
        return enqueueOp(*mOp, mValues, inputDesc, outputDesc, inputs, outputs, workspace, stream, nullptr);
    }

private:
    OpSpec const* mOp;
    FieldValues mValues;
    std::string mNamespace;
    bool mShapeErrorReported{false};
};

class CreatorV2 final : public nvinfer1::IPluginCreator {
public:
    void bind(OpSpec const& op) noexcept {
        mOp = &op;
        describeFields(op, mNames, mNamesFC);
    }

    char const* getPluginName() const noexcept override { return mOp->name; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mNamesFC; }

    nvinfer1::IPluginV2* createPlugin(char const*, nvinfer1::PluginFieldCollection const* fc) noexcept override {
        FieldValues values;
        ErrorText err;
        if (!parseFields(*mOp, fc, values, err)) {
            reportError(nullptr, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);
            return nullptr;
        }
        return make(values);
    }

    nvinfer1::IPluginV2* deserializePlugin(char const*, void const* serialData, size_t serialLength) noexcept override {
        FieldValues values;
        ErrorText err;
        if (!deserializeFields(*mOp, serialData, serialLength, values, err)) {
            reportError(nullptr, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);
            return nullptr;
        }
        return make(values);
    }

    void setPluginNamespace(char const* pluginNamespace) noexcept override {
        try {
            mNamespace = pluginNamespace != nullptr ? pluginNamespace : "";
        } catch (...) {
            // keep the previous namespace (out of host memory)
        }
    }
    char const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

private:
    nvinfer1::IPluginV2* make(FieldValues const& values) noexcept {
        try {
            return new PluginV2(*mOp, values, mNamespace.c_str());
        } catch (...) {
            ErrorText err;
            setError(err, "%s: out of host memory", mOp->name);
            reportError(nullptr, nvinfer1::ErrorCode::kFAILED_ALLOCATION, err.text);
            return nullptr;
        }
    }

    OpSpec const* mOp{nullptr};
    nvinfer1::PluginField mNames[kMaxFields];
    nvinfer1::PluginFieldCollection mNamesFC{};
    std::string mNamespace{kPluginNamespace};    // short: no allocation
};

struct CreatorTableV2 {
    CreatorV2 creators[kNbOps];
    nvinfer1::IPluginCreator* list[kNbOps];
    CreatorTableV2() noexcept {
        for (int32_t n = 0; n < kNbOps; ++n) {
            creators[n].bind(*allOps()[n]);
            list[n] = &creators[n];
        }
    }
};

CreatorTableV2& creatorTableV2() noexcept {
    static CreatorTableV2 table;
    return table;
}

#if !SATEDGE_TRT_HAS_LOAD_LIBRARY
// TensorRT < 8.6: register when the library is loaded (see the top of the file).
struct StaticRegistration {
    StaticRegistration() noexcept {
        nvinfer1::IPluginRegistry* const registry = ::getPluginRegistry();
        CreatorTableV2& table = creatorTableV2();
        for (int32_t n = 0; n < kNbOps; ++n) {
            if (registry == nullptr || !registry->registerCreator(table.creators[n], kPluginNamespace)) {
                ErrorText err;
                setError(err, "%s: could not register the plugin creator (version %s, namespace %s)",
                         allOps()[n]->name, kPluginVersion, kPluginNamespace);
                logMessage(nvinfer1::ILogger::Severity::kWARNING, err.text);
            }
        }
    }
};
StaticRegistration const gStaticRegistration;
#endif

}  // namespace
}  // namespace satedge_trt

/** TensorRT 8.6+ plugin library entry point for IPluginV2 creators (IPluginRegistry::loadLibrary). */
extern "C" SATEDGE_TRT_EXPORT nvinfer1::IPluginCreator* const* getPluginCreators(int32_t& nbCreators) {
    nbCreators = satedge_trt::kNbOps;
    return satedge_trt::creatorTableV2().list;
}

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#endif  // NV_TENSORRT_MAJOR < 11

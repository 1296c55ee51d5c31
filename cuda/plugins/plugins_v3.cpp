// plugins_v3.cpp - TensorRT 10+ plugins: IPluginV3 with the IPluginV3OneCore,
// IPluginV3OneBuild and IPluginV3OneRuntime capabilities, and one
// IPluginCreatorV3One per op (plugin_common.h: the op rules are shared with
// the TensorRT 8.x adapter of plugins_v2.cpp).
//
// Registration: TensorRT loads the library with IPluginRegistry::loadLibrary
// (Python: registry.load_library; trtexec --dynamicPlugins=...), which calls
// setLoggerFinder (plugins_common.cpp) and getCreators below and registers
// each creator under its own namespace, "satedge". Plugin name = ONNX
// op_type, version "1": the ONNX parser finds them from the node's
// plugin_version / plugin_namespace attributes. C++14.
#include "plugin_common.h"

#if NV_TENSORRT_MAJOR >= 10

#include <new>

namespace satedge_trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginTensorDesc;

class PluginV3 final : public nvinfer1::IPluginV3,
                       public nvinfer1::IPluginV3OneCore,
                       public nvinfer1::IPluginV3OneBuild,
                       public nvinfer1::IPluginV3OneRuntime {
public:
    PluginV3(OpSpec const& op, FieldValues const& values) noexcept : mOp(&op), mValues(values) {}
    PluginV3(PluginV3 const&) = default;    // clone(); mSerial is rebuilt by getFieldsToSerialize()
    PluginV3& operator=(PluginV3 const&) = delete;
    ~PluginV3() noexcept override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
        switch (type) {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }
    nvinfer1::IPluginV3* clone() noexcept override { return new (std::nothrow) PluginV3(*this); }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return mOp->name; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return mOp->nbOutputs; }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                            int32_t nbOutputs) noexcept override {
        return checkDescs(in, nbInputs, out, nbOutputs) ? 0 : -1;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override {
        if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != mOp->nbOutputs ||
            nbInputs != mOp->nbInputs) {
            return fail("getOutputDataTypes: wrong number of inputs or outputs");
        }
        for (int32_t t = 0; t < nbOutputs; ++t) {
            outputTypes[t] = mOp->outputType(mValues, t, inputTypes);
        }
        return 0;
    }

    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const*,
                            int32_t, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override {
        if (inputs == nullptr || outputs == nullptr || nbInputs != mOp->nbInputs || nbOutputs != mOp->nbOutputs) {
            return fail("getOutputShapes: wrong number of inputs or outputs");
        }
        ErrorText err;
        for (int32_t t = 0; t < nbOutputs; ++t) {
            if (!mOp->outputDims(mValues, t, inputs, exprBuilder, outputs[t], err)) {
                reportError(mRecorder, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);
                return -1;
            }
        }
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        if (inOut == nullptr || pos < 0 || pos >= kMaxTensors) {
            return false;
        }
        DataType types[kMaxTensors];
        nvinfer1::TensorFormat formats[kMaxTensors];
        for (int32_t t = 0; t <= pos; ++t) {
            types[t] = inOut[t].desc.type;
            formats[t] = inOut[t].desc.format;
        }
        return supportsAt(*mOp, mValues, pos, types, formats, nbInputs, nbOutputs);
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*,
                            int32_t) const noexcept override {
        if (inputs == nullptr || nbInputs < 0 || nbInputs > kMaxTensors) {
            return 0;
        }
        nvinfer1::Dims dims[kMaxTensors];
        for (int32_t t = 0; t < nbInputs; ++t) {
            dims[t] = inputs[t].max;    // enough for every shape of the profile
        }
        return workspaceFor(*mOp, mValues, dims, nbInputs);
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
        if (in == nullptr || out == nullptr || nbInputs < 0 || nbInputs > kMaxTensors || nbOutputs < 0 ||
            nbOutputs > kMaxTensors) {
            return fail("onShapeChange: invalid tensor descriptions");
        }
        nvinfer1::Dims inDims[kMaxTensors];
        nvinfer1::Dims outDims[kMaxTensors];
        for (int32_t t = 0; t < nbInputs; ++t) {
            inDims[t] = in[t].dims;
        }
        for (int32_t t = 0; t < nbOutputs; ++t) {
            outDims[t] = out[t].dims;
        }
        return checkDims(inDims, nbInputs, outDims, nbOutputs) ? 0 : -1;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
        return enqueueOp(*mOp, mValues, inputDesc, outputDesc, inputs, outputs, workspace, stream, mRecorder);
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override {
        PluginV3* const copy = new (std::nothrow) PluginV3(*this);
        if (copy != nullptr && context != nullptr) {
            copy->mRecorder = context->getErrorRecorder();
        }
        return copy;
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        for (int32_t j = 0; j < mOp->nbFields; ++j) {
            bool const isInt = mOp->fields[j].type == nvinfer1::PluginFieldType::kINT32;
            mSerial[j].name = mOp->fields[j].name;
            mSerial[j].data = isInt ? static_cast<void const*>(&mValues.i[j]) : static_cast<void const*>(&mValues.f[j]);
            mSerial[j].type = mOp->fields[j].type;
            mSerial[j].length = 1;
        }
        mSerialFC.nbFields = mOp->nbFields;
        mSerialFC.fields = mOp->nbFields > 0 ? mSerial : nullptr;
        return &mSerialFC;
    }

private:
    int32_t fail(char const* what) const noexcept {
        ErrorText err;
        setError(err, "%s: %s", mOp->name, what);
        reportError(mRecorder, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);
        return -1;
    }

    bool checkDims(nvinfer1::Dims const* in, int32_t nbInputs, nvinfer1::Dims const* out,
                   int32_t nbOutputs) const noexcept {
        ErrorText err;
        if (!checkTensors(*mOp, mValues, in, nbInputs, out, nbOutputs, err)) {
            reportError(mRecorder, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);
            return false;
        }
        return true;
    }

    // Build-time dims (desc.dims, -1 where the profile decides).
    bool checkDescs(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                    int32_t nbOutputs) const noexcept {
        if (in == nullptr || out == nullptr || nbInputs < 0 || nbInputs > kMaxTensors || nbOutputs < 0 ||
            nbOutputs > kMaxTensors) {
            fail("configurePlugin: invalid tensor descriptions");
            return false;
        }
        nvinfer1::Dims inDims[kMaxTensors];
        nvinfer1::Dims outDims[kMaxTensors];
        for (int32_t t = 0; t < nbInputs; ++t) {
            inDims[t] = in[t].desc.dims;
        }
        for (int32_t t = 0; t < nbOutputs; ++t) {
            outDims[t] = out[t].desc.dims;
        }
        return checkDims(inDims, nbInputs, outDims, nbOutputs);
    }

    OpSpec const* mOp;
    FieldValues mValues;
    nvinfer1::IErrorRecorder* mRecorder{nullptr};    // the execution context's, after attachToContext
    nvinfer1::PluginField mSerial[kMaxFields];
    nvinfer1::PluginFieldCollection mSerialFC{};
};

class CreatorV3 final : public nvinfer1::IPluginCreatorV3One {
public:
    CreatorV3() noexcept = default;
    void bind(OpSpec const& op) noexcept {
        mOp = &op;
        describeFields(op, mNames, mNamesFC);
    }

    nvinfer1::IPluginV3* createPlugin(char const*, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase) noexcept override {
        // The same fields at build time (node attributes) and at runtime (getFieldsToSerialize).
        FieldValues values;
        ErrorText err;
        if (!parseFields(*mOp, fc, values, err)) {
            reportError(nullptr, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);
            return nullptr;
        }
        PluginV3* const plugin = new (std::nothrow) PluginV3(*mOp, values);
        if (plugin == nullptr) {
            setError(err, "%s: out of host memory", mOp->name);
            reportError(nullptr, nvinfer1::ErrorCode::kFAILED_ALLOCATION, err.text);
        }
        return plugin;
    }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mNamesFC; }
    char const* getPluginName() const noexcept override { return mOp->name; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

private:
    OpSpec const* mOp{nullptr};
    nvinfer1::PluginField mNames[kMaxFields];
    nvinfer1::PluginFieldCollection mNamesFC{};
};

struct CreatorTableV3 {
    CreatorV3 creators[kNbOps];
    nvinfer1::IPluginCreatorInterface* list[kNbOps];
    CreatorTableV3() noexcept {
        for (int32_t n = 0; n < kNbOps; ++n) {
            creators[n].bind(*allOps()[n]);
            list[n] = &creators[n];
        }
    }
};

}  // namespace
}  // namespace satedge_trt

/** TensorRT 10+ plugin library entry point (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins). */
extern "C" SATEDGE_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static satedge_trt::CreatorTableV3 table;
    nbCreators = satedge_trt::kNbOps;
    return table.list;
}

#endif  // NV_TENSORRT_MAJOR >= 10

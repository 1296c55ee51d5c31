// plugins_common.cpp - error reporting, logging and the interface-independent
// parts of the plugin methods (plugin_common.h), shared by the TensorRT 8.x
// (plugins_v2.cpp) and 10+ (plugins_v3.cpp) adapters; the TensorRT 8.6+
// library entry point setLoggerFinder. C++14.
#include "plugin_common.h"

#include <atomic>

namespace satedge_trt {
namespace {

#if SATEDGE_TRT_HAS_LOAD_LIBRARY
// Set by TensorRT through setLoggerFinder when it loads this library
// (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, version-compatible plans).
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};
#endif

nvinfer1::ILogger* currentLogger() noexcept {
#if SATEDGE_TRT_HAS_LOAD_LIBRARY
    nvinfer1::ILoggerFinder* const finder = gLoggerFinder.load();
    if (finder != nullptr) {
        try {
            nvinfer1::ILogger* const logger = finder->findLogger();
            if (logger != nullptr) {
                return logger;
            }
        } catch (...) {
            // findLogger() is not declared noexcept; fall back to the global logger.
        }
    }
#endif
    return ::getLogger();    // libnvinfer's global logger (may be null)
}

void emit(nvinfer1::ILogger::Severity severity, char const* text) noexcept {
    nvinfer1::ILogger* const logger = currentLogger();
    if (logger != nullptr) {
        logger->log(severity, text);
    } else if (severity <= nvinfer1::ILogger::Severity::kWARNING) {
        std::fprintf(stderr, "%s\n", text);
    }
}

}  // namespace

void logMessage(nvinfer1::ILogger::Severity severity, char const* message) noexcept {
    char text[sizeof(ErrorText::text) + 16];
    std::snprintf(text, sizeof(text), "satedge::%s", message);
    emit(severity, text);
}

void reportError(nvinfer1::IErrorRecorder* recorder, nvinfer1::ErrorCode code, char const* message) noexcept {
    char text[sizeof(ErrorText::text) + 16];
    std::snprintf(text, sizeof(text), "satedge::%s", message);
    if (recorder == nullptr) {
        nvinfer1::IPluginRegistry* const registry = ::getPluginRegistry();
        recorder = registry != nullptr ? registry->getErrorRecorder() : nullptr;
    }
    if (recorder != nullptr) {
        recorder->reportError(code, text);    // its "fatal" answer changes nothing here: we fail anyway
    }
    emit(nvinfer1::ILogger::Severity::kERROR, text);
}

void describeFields(OpSpec const& op, nvinfer1::PluginField* names, nvinfer1::PluginFieldCollection& fc) noexcept {
    for (int32_t j = 0; j < op.nbFields; ++j) {
        names[j].name = op.fields[j].name;
        names[j].data = nullptr;
        names[j].type = op.fields[j].type;
        names[j].length = 1;
    }
    fc.nbFields = op.nbFields;
    fc.fields = op.nbFields > 0 ? names : nullptr;
}

bool parseFields(OpSpec const& op, nvinfer1::PluginFieldCollection const* fc, FieldValues& out,
                 ErrorText& err) noexcept {
    return readFields(op.name, op.fields, op.nbFields, fc, out, err) && op.checkFields(out, err);
}

bool supportsAt(OpSpec const& op, FieldValues const& v, int32_t pos, nvinfer1::DataType const* types,
                nvinfer1::TensorFormat const* formats, int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (nbInputs != op.nbInputs || nbOutputs != op.nbOutputs || pos < 0 || pos >= nbInputs + nbOutputs) {
        return false;
    }
    return formats[pos] == nvinfer1::TensorFormat::kLINEAR && op.supportsType(v, pos, types);
}

bool checkTensors(OpSpec const& op, FieldValues const& v, nvinfer1::Dims const* in, int32_t nbInputs,
                  nvinfer1::Dims const* out, int32_t nbOutputs, ErrorText& err) noexcept {
    if (nbInputs != op.nbInputs || nbOutputs != op.nbOutputs) {
        setError(err, "%s: takes %d input(s) and %d output(s), got %d and %d", op.name,
                 static_cast<int>(op.nbInputs), static_cast<int>(op.nbOutputs), static_cast<int>(nbInputs),
                 static_cast<int>(nbOutputs));
        return false;
    }
    return op.checkDims(v, in, out, err);
}

size_t workspaceFor(OpSpec const& op, FieldValues const& v, nvinfer1::Dims const* in, int32_t nbInputs) noexcept {
    if (op.workspaceSize == nullptr || nbInputs != op.nbInputs) {
        return 0;
    }
    return op.workspaceSize(v, in);
}

OpSpec const* const* allOps() noexcept {
    static OpSpec const* const ops[kNbOps] = {&kPreprocessU12Op, &kCloudFractionOp, &kRxGlobalOp,
                                              &kRxLocalOp,       &kNsiScoreOp,      &kNsiSparsifyOp};
    return ops;
}

int32_t enqueueOp(OpSpec const& op, FieldValues const& v, nvinfer1::PluginTensorDesc const* inDesc,
                  nvinfer1::PluginTensorDesc const* outDesc, void const* const* inputs, void* const* outputs,
                  void* workspace, cudaStream_t stream, nvinfer1::IErrorRecorder* recorder) noexcept {
    ErrorText err;
    err.text[0] = '\0';
    if (inDesc == nullptr || outDesc == nullptr || inputs == nullptr || outputs == nullptr) {
        setError(err, "%s: enqueue without tensor descriptions or addresses", op.name);
        reportError(recorder, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);
        return -1;
    }
    // The runtime shapes must still be those the engine was built for (cheap).
    nvinfer1::Dims in[kMaxTensors];
    nvinfer1::Dims out[kMaxTensors];
    for (int32_t t = 0; t < op.nbInputs; ++t) {
        in[t] = inDesc[t].dims;
    }
    for (int32_t t = 0; t < op.nbOutputs; ++t) {
        out[t] = outDesc[t].dims;
    }
    if (!op.checkDims(v, in, out, err)) {
        reportError(recorder, nvinfer1::ErrorCode::kINVALID_ARGUMENT, err.text);
        return -1;
    }
    satedge_status const status = op.enqueue(v, inDesc, outDesc, inputs, outputs, workspace, stream, err);
    if (status == SATEDGE_OK) {
        return 0;
    }
    char message[sizeof(ErrorText::text) + 128];
    std::snprintf(message, sizeof(message), "%s: enqueue failed: %s (cudaError_t %d)%s%s", op.name,
                  satedge_status_string(status), satedge_last_cuda_error(), err.text[0] != '\0' ? ": " : "",
                  err.text);
    reportError(recorder,
                status == SATEDGE_ERR_INVALID_ARG ? nvinfer1::ErrorCode::kINVALID_ARGUMENT
                                                  : nvinfer1::ErrorCode::kFAILED_EXECUTION,
                message);
    return -1;
}

}  // namespace satedge_trt

#if SATEDGE_TRT_HAS_LOAD_LIBRARY
/** TensorRT 8.6+: called when the library is loaded; the finder gives the logger of the calling builder/runtime. */
extern "C" SATEDGE_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    satedge_trt::gLoggerFinder.store(finder);
}
#endif

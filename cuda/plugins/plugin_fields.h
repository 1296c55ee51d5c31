/*
 * plugin_fields.h - the fields (creation parameters) of the satedge TensorRT
 * plugins, and the helper that reads them from a PluginFieldCollection.
 *
 * Contract with the ONNX side (engines/ops/trt_plugins.py): a node
 * satedge.ops::<Name> becomes the plugin <Name>, version kPluginVersion, in
 * the namespace kPluginNamespace; the node's attributes are the fields below,
 * in this order (engines/ops/trt_plugins.py reads the k<Name>Fields arrays of
 * this file with a regular expression: keep one array per line, in exactly
 * this format). The ONNX parser passes an INT attribute as kINT32 and a
 * FLOAT attribute as kFLOAT32.
 *
 * C++14 (TensorRT 8.2 on JetPack 4.6 builds this with gcc 7).
 */
#ifndef SATEDGE_TRT_PLUGIN_FIELDS_H_
#define SATEDGE_TRT_PLUGIN_FIELDS_H_

#include <NvInferRuntime.h>

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>

namespace satedge_trt {

/** Plugin namespace and version of every satedge plugin. */
static const char kPluginNamespace[] = "satedge";
static const char kPluginVersion[] = "1";

/** One creation field: its name and its PluginFieldType (kINT32 or kFLOAT32). */
struct FieldSpec {
    char const* name;
    nvinfer1::PluginFieldType type;
};

static const satedge_trt::FieldSpec kPreprocessU12Fields[] = {{"bands", nvinfer1::PluginFieldType::kINT32}, {"height", nvinfer1::PluginFieldType::kINT32}, {"width", nvinfer1::PluginFieldType::kINT32}, {"x0", nvinfer1::PluginFieldType::kINT32}, {"y0", nvinfer1::PluginFieldType::kINT32}, {"tile_h", nvinfer1::PluginFieldType::kINT32}, {"tile_w", nvinfer1::PluginFieldType::kINT32}, {"dtype", nvinfer1::PluginFieldType::kINT32}};
// PreprocessU16 has no plugin: TensorRT has no 16-bit unsigned tensor type
// (nvinfer1::DataType has kUINT8 but nothing 16-bit unsigned up to 10.7), so a
// uint16 frame cannot be an engine input. The daemon preprocesses uint16
// frames through the C ABI (satedge_preprocess_u16, onboard/kernels.py)
// before the engine, or the sensor sends 12-bit packed frames (PreprocessU12).
static const satedge_trt::FieldSpec kCloudFractionFields[] = {{"tile_pixels", nvinfer1::PluginFieldType::kINT32}};
// kRxGlobalFields: none
static const satedge_trt::FieldSpec kRxLocalFields[] = {{"outer", nvinfer1::PluginFieldType::kINT32}, {"inner", nvinfer1::PluginFieldType::kINT32}, {"regularization", nvinfer1::PluginFieldType::kFLOAT32}};
static const satedge_trt::FieldSpec kNsiScoreFields[] = {{"p", nvinfer1::PluginFieldType::kINT32}, {"beta", nvinfer1::PluginFieldType::kFLOAT32}, {"lam", nvinfer1::PluginFieldType::kFLOAT32}, {"variant", nvinfer1::PluginFieldType::kINT32}};
static const satedge_trt::FieldSpec kNsiSparsifyFields[] = {{"k", nvinfer1::PluginFieldType::kINT32}, {"p", nvinfer1::PluginFieldType::kINT32}, {"beta", nvinfer1::PluginFieldType::kFLOAT32}, {"lam", nvinfer1::PluginFieldType::kFLOAT32}, {"variant", nvinfer1::PluginFieldType::kINT32}};

/** Most fields any plugin has (PreprocessU12). */
static const int32_t kMaxFields = 8;

/**
 * Field values in declaration order: field j is i[j] when its type is kINT32,
 * f[j] when it is kFLOAT32 (the other slot stays 0).
 */
struct FieldValues {
    int32_t i[kMaxFields];
    float f[kMaxFields];
};

/** A fixed-size error message (no allocation, so usable from noexcept code). */
struct ErrorText {
    char text[384];
};

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
inline void setError(ErrorText& err, char const* fmt, ...) noexcept {
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(err.text, sizeof(err.text), fmt, args);
    va_end(args);
}

/** Name of a PluginFieldType for messages. */
inline char const* fieldTypeName(nvinfer1::PluginFieldType type) noexcept {
    switch (type) {
    case nvinfer1::PluginFieldType::kFLOAT16: return "kFLOAT16";
    case nvinfer1::PluginFieldType::kFLOAT32: return "kFLOAT32";
    case nvinfer1::PluginFieldType::kFLOAT64: return "kFLOAT64";
    case nvinfer1::PluginFieldType::kINT8: return "kINT8";
    case nvinfer1::PluginFieldType::kINT16: return "kINT16";
    case nvinfer1::PluginFieldType::kINT32: return "kINT32";
    case nvinfer1::PluginFieldType::kCHAR: return "kCHAR";
    case nvinfer1::PluginFieldType::kDIMS: return "kDIMS";
    default: return "another type";
    }
}

/**
 * Reads the fields `specs[0..nbSpecs-1]` of plugin `plugin` from `fc` into
 * `out`. Refuses (returns false with a message in `err`) a null collection
 * or field, a field name not in `specs`, a field given twice, a missing
 * field, a length other than 1, and a type other than the declared one.
 * Besides the declared kINT32 / kFLOAT32 it accepts the same value as
 * kINT64 (TensorRT 10+, when it fits in int32) or kFLOAT64 (converted to
 * float), which is what some Python callers build.
 */
inline bool readFields(char const* plugin, FieldSpec const* specs, int32_t nbSpecs,
                       nvinfer1::PluginFieldCollection const* fc, FieldValues& out, ErrorText& err) noexcept {
    std::memset(&out, 0, sizeof(out));
    if (nbSpecs < 0 || nbSpecs > kMaxFields) {
        setError(err, "%s: internal error: %d field specs", plugin, static_cast<int>(nbSpecs));
        return false;
    }
    int32_t const nbFields = fc == nullptr ? 0 : fc->nbFields;
    if (nbFields < 0 || (nbFields > 0 && fc->fields == nullptr)) {
        setError(err, "%s: invalid PluginFieldCollection (nbFields %d, fields %p)", plugin,
                 static_cast<int>(nbFields), fc == nullptr ? nullptr : static_cast<void const*>(fc->fields));
        return false;
    }
    bool seen[kMaxFields] = {};
    for (int32_t n = 0; n < nbFields; ++n) {
        nvinfer1::PluginField const& field = fc->fields[n];
        if (field.name == nullptr) {
            setError(err, "%s: field %d has no name", plugin, static_cast<int>(n));
            return false;
        }
        int32_t j = 0;
        while (j < nbSpecs && std::strcmp(field.name, specs[j].name) != 0) {
            ++j;
        }
        if (j == nbSpecs) {
            setError(err, "%s: unknown field \"%s\" (the plugin takes %d field(s)%s%s%s)", plugin, field.name,
                     static_cast<int>(nbSpecs), nbSpecs > 0 ? ", the first \"" : "",
                     nbSpecs > 0 ? specs[0].name : "", nbSpecs > 0 ? "\"" : "");
            return false;
        }
        if (seen[j]) {
            setError(err, "%s: field \"%s\" is given twice", plugin, field.name);
            return false;
        }
        if (field.length != 1 || field.data == nullptr) {
            setError(err, "%s: field \"%s\" must hold exactly one value (length %d, data %p)", plugin, field.name,
                     static_cast<int>(field.length), field.data);
            return false;
        }
        bool ok = false;
        if (specs[j].type == nvinfer1::PluginFieldType::kINT32) {
            if (field.type == nvinfer1::PluginFieldType::kINT32) {
                std::memcpy(&out.i[j], field.data, sizeof(int32_t));
                ok = true;
            }
#if NV_TENSORRT_MAJOR >= 10
            else if (field.type == nvinfer1::PluginFieldType::kINT64) {
                int64_t v = 0;
                std::memcpy(&v, field.data, sizeof(v));
                if (v < INT32_MIN || v > INT32_MAX) {
                    setError(err, "%s: field \"%s\" = %lld does not fit in int32", plugin, field.name,
                             static_cast<long long>(v));
                    return false;
                }
                out.i[j] = static_cast<int32_t>(v);
                ok = true;
            }
#endif
        } else if (specs[j].type == nvinfer1::PluginFieldType::kFLOAT32) {
            if (field.type == nvinfer1::PluginFieldType::kFLOAT32) {
                std::memcpy(&out.f[j], field.data, sizeof(float));
                ok = true;
            } else if (field.type == nvinfer1::PluginFieldType::kFLOAT64) {
                double v = 0.0;
                std::memcpy(&v, field.data, sizeof(v));
                out.f[j] = static_cast<float>(v);
                ok = true;
            }
        }
        if (!ok) {
            setError(err, "%s: field \"%s\" has type %s, expected %s", plugin, field.name,
                     fieldTypeName(field.type), fieldTypeName(specs[j].type));
            return false;
        }
        seen[j] = true;
    }
    for (int32_t j = 0; j < nbSpecs; ++j) {
        if (!seen[j]) {
            setError(err, "%s: missing field \"%s\" (%s)", plugin, specs[j].name, fieldTypeName(specs[j].type));
            return false;
        }
    }
    return true;
}

}  // namespace satedge_trt

#endif  // SATEDGE_TRT_PLUGIN_FIELDS_H_

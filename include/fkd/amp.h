// --amp: the precision of a network's matrix products and convolutions, as a name the
// command line, run configurations and label-store manifests share. Torch-free; running a
// network in a precision is src/models/autocast.h.
#pragma once
#include <cstdint>
#include <string>

#include "fkd/enum_names.h"

namespace fkd {

enum class AmpMode : uint8_t {
  kAuto,  ///< resolved per device and role (resolve_amp, resolve_teacher_amp)
  kOff,   ///< float32 everywhere
  kBf16,  ///< bfloat16 autocast (CUDA and CPU); no loss scaling needed
  kFp16,  ///< float16 autocast with dynamic loss scaling (CUDA only)
};

inline constexpr EnumNames<AmpMode, 4> kAmpNames({{{AmpMode::kAuto, "auto"},
                                                   {AmpMode::kOff, "off"},
                                                   {AmpMode::kBf16, "bf16"},
                                                   {AmpMode::kFp16, "fp16"}}});

/// "auto", "off", "bf16", "fp16"
inline const char* amp_name(AmpMode m) { return kAmpNames.name(m); }
/// Throws ConfigError naming the choices.
inline AmpMode parse_amp(const std::string& name) { return kAmpNames.parse(name, "--amp mode"); }
/// The dtype a resolved mode computes in: "float32" (kOff), "bfloat16", "float16".
inline const char* amp_dtype_name(AmpMode m) {
  switch (m) {
    case AmpMode::kOff:
      return "float32";
    case AmpMode::kBf16:
      return "bfloat16";
    case AmpMode::kFp16:
      return "float16";
    default:
      return "unresolved";
  }
}

}  // namespace fkd

// Channel conversions with PIL's exact integer arithmetic (libImaging/Convert.c), so that
// decode_image(..., want_channels) matches PIL's Image.convert("L" / "RGB").
#pragma once
#include <cstddef>
#include <cstdint>

namespace fkd {

/// RGB -> L as PIL computes it: ITU-R 601-2 luma in 16-bit fixed point, rounded
/// (299/587/114 per mille scaled by 65536: 19595, 38470, 7471).
inline void rgb_to_gray(const uint8_t* rgb, size_t npx, uint8_t* out) {
  for (size_t i = 0; i < npx; ++i, rgb += 3) {
    out[i] = uint8_t((rgb[0] * 19595u + rgb[1] * 38470u + rgb[2] * 7471u + 0x8000u) >> 16);
  }
}

/// L -> RGB: the grey level replicated.
inline void gray_to_rgb(const uint8_t* gray, size_t npx, uint8_t* out) {
  for (size_t i = 0; i < npx; ++i, out += 3) out[0] = out[1] = out[2] = gray[i];
}

/// Adobe-inverted CMYK (how PIL reads every CMYK JPEG, "CMYK;I") -> RGB with PIL's cmyk2rgb:
/// after undoing the inversion, channel = nk - nk*c/255 with nk = 255 - k, rounded as PIL does.
inline void cmyk_inverted_to_rgb(const uint8_t* cmyk, size_t npx, uint8_t* out) {
  for (size_t i = 0; i < npx; ++i, cmyk += 4, out += 3) {
    const int nk = cmyk[3];  // 255 - k, with k stored inverted
    for (int ch = 0; ch < 3; ++ch) {
      const int t = (255 - cmyk[ch]) * nk + 128;
      const int v = nk - (((t >> 8) + t) >> 8);
      out[ch] = uint8_t(v < 0 ? 0 : v);
    }
  }
}

}  // namespace fkd

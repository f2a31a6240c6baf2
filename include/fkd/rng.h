// Counter-based random numbers: every random decision of the data pipeline is a pure
// function of (seed, stream, counters), so results do not depend on thread count,
// scheduling or on what ran before (resume gives the same crops as an unbroken run).
#pragma once
#include <cmath>
#include <cstdint>
#include <initializer_list>

namespace fkd {

/// SplitMix64 finalizer: a bijective 64-bit mix with full avalanche.
inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// Hashes a sequence of keys into one 64-bit value (order matters).
inline uint64_t hash_keys(std::initializer_list<uint64_t> keys) {
  uint64_t h = 0x6a09e667f3bcc909ULL;
  for (uint64_t k : keys) h = mix64(h ^ mix64(k));
  return h;
}

/// Streams keep independent decisions apart even for equal counters.
enum class RngStream : uint64_t {
  kOrder = 1,
  kAugment = 2,
  kCropPick = 3,
  kMix = 4,
  kLabelCrops = 5
};

/// xoshiro256** generator, seeded from a key. Small, fast, and good enough for augmentation.
class Rng {
 public:
  explicit Rng(uint64_t key) {
    uint64_t z = key;
    for (auto& x : s_) x = mix64(z += 0x9e3779b97f4a7c15ULL);
  }
  Rng(uint64_t seed, RngStream stream, std::initializer_list<uint64_t> counters)
      : Rng(hash_of(seed, stream, counters)) {}

  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  /// Uniform in [a, b).
  double uniform(double a, double b) { return a + (b - a) * uniform(); }
  /// Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; bias < 2^-64 * n).
  uint64_t below(uint64_t n) {
    return uint64_t((static_cast<unsigned __int128>(next()) * n) >> 64);
  }
  /// True with probability p.
  bool bernoulli(double p) { return uniform() < p; }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t hash_of(uint64_t seed, RngStream stream, std::initializer_list<uint64_t> c) {
    uint64_t h = hash_keys({seed, static_cast<uint64_t>(stream)});
    for (uint64_t k : c) h = mix64(h ^ mix64(k));
    return h;
  }
  uint64_t s_[4];
};

}  // namespace fkd

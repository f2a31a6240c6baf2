// Checks on a store's manifest that the shard and record code share: value ranges, the
// store key that ties every shard to its manifest, and the crop sampler names.
#pragma once
#include <cstdint>
#include <string>

#include "fkd/store.h"

namespace fkd::store {

inline constexpr const char* kRandomResizedCrop = "random_resized_crop";  ///< crop samplers
inline constexpr const char* kRandomCrop = "random_crop";
inline constexpr uint32_t kMaxShards = 99999;  ///< shard names have 5 digits

/// XXH3-64 of the manifest's identity: every field manifest_differences compares, in a
/// canonical binary form (docs/label-store.md, "Store key").
uint64_t store_key(const Manifest& m);

/// The first format version with explicit crops (manifest key "crops").
inline constexpr int kExplicitCropsSince = 3;

/// label_crop_hash's formula over `n` crops: XXH32 (seed 0) of (left, top, width, height,
/// flip) as little-endian int32 of each crop in order.
uint32_t crops_hash(const CropPlan* crops, size_t n);

/// "" when k is valid for the label type and class count, else what is wrong.
std::string k_problem(LabelType t, int64_t k, uint64_t num_classes);

/// True when `dir` holds a finished store made as `m` says (its manifest, written last, has
/// no difference from `m`, and every shard is finished): what a rerun of the command that
/// writes `m` there finds done.
bool finished_store_of(const std::string& dir, const Manifest& m);

/// Checks a manifest's values (ranges, k for the label type, record size limit).
/// Returns the first problem as "field: what is wrong", or "" when valid.
std::string manifest_problem(const Manifest& m);

}  // namespace fkd::store

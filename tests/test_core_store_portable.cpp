// The packed record decoder as CPUs without SSE2 (ARM boards among them) run it: this
// executable compiles src/store/packed.cpp again with FKD_PACKED_PORTABLE (see
// tests/CMakeLists.txt), and checks it against the encoder and the golden shards.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fkd/store.h"
#include "store/shard_file.h"
#include "testutil.h"

using namespace fkd;

namespace {

TEST(StorePortable, PackedRecordsRoundTrip) {
  std::mt19937 gen(3);
  for (int trial = 0; trial < 400; ++trial) {
    store::RecordFormat f;
    f.label_type = LabelType(gen() % 4);  // every packable type
    f.num_classes = 1 + int(gen() % 300);
    f.k = f.label_type >= LabelType::kMarginalSmoothing
              ? 1 + int(gen() % uint32_t(std::min(f.num_classes, 12)))
              : 1;
    f.precision = Precision(gen() % 3);
    f.crops_per_image = 1 + gen() % 300;
    ImageLabels l;
    l.height = 5;
    l.width = 7;
    l.num_crops = f.crops_per_image;
    const int ni = f.n_idx(), nv = f.n_val();
    const size_t hot = gen() % uint32_t(f.num_classes);
    std::vector<float> p(static_cast<size_t>(f.num_classes));
    std::vector<int32_t> idx(static_cast<size_t>(ni));
    std::vector<float> v(static_cast<size_t>(nv));
    for (uint32_t c = 0; c < f.crops_per_image; ++c) {
      double sum = 0;
      for (float& x : p) sum += (x = std::exp(std::normal_distribution<float>(0, 2)(gen)));
      p[hot] += float(gen() % 3) * float(sum);
      sum = 0;
      for (float x : p) sum += x;
      for (float& x : p) x = float(x / sum);
      quantize_crop(p.data(), f.num_classes, f.label_type, f.k, idx.data(), v.data());
      l.indices.insert(l.indices.end(), idx.begin(), idx.end());
      l.values.insert(l.values.end(), v.begin(), v.end());
    }
    std::vector<uint8_t> packed;
    ASSERT_TRUE(store::encode_packed_record(f, l, packed)) << trial;
    ImageLabels got;
    const std::string name = "memory";
    store::decode_packed_record(f, packed.data(), packed.size(), got, store::Where{name, 0, 0});
    ASSERT_EQ(got.indices, l.indices) << trial;
    ASSERT_EQ(got.values.size(), l.values.size()) << trial;
    for (size_t i = 0; i < l.values.size(); ++i) {
      ASSERT_EQ(store::value_code(got.values[i], f.precision),
                store::value_code(l.values[i], f.precision))
          << trial << " value " << i;
    }
  }
}

TEST(StorePortable, GoldenShardsDecodeAndRepackToTheSameBytes) {
  for (const char* file :
       {"v2-marginal_smoothing-fp16.fkdl", "v2-marginal_smoothing-fp16-many.fkdl",
        "v2-marginal_renorm-u8.fkdl", "v2-smoothing-fp32.fkdl", "v2-hard-u8.fkdl",
        "v3-marginal_smoothing-fp16.fkdl", "v3-marginal_smoothing-fp16-explicit.fkdl",
        "v3-hard-u8-explicit.fkdl"}) {
    SCOPED_TRACE(file);
    const std::string path = test::source_path(std::string("fuzz/corpus/") + file);
    const std::string b = test::read_file(path);
    const auto v =
        store::ShardView::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(), path);
    const store::RecordFormat f = store::record_format(v.header());
    ImageLabels l;
    std::vector<uint8_t> again;
    for (uint64_t i = v.header().image_begin; i < v.header().image_end; ++i) {
      v.read(i, l);
      const store::IndexEntry& e = v.entry(i);
      const uint8_t* block = v.checked_block(i);
      ASSERT_EQ(store::load_u32(block + 28), uint32_t(store::Codec::kPacked));
      ASSERT_TRUE(store::encode_packed_record(f, l, again));
      EXPECT_EQ(std::vector<uint8_t>(block + store::kBlockHeaderSize,
                                     block + store::kBlockHeaderSize + e.payload_size),
                again);
    }
  }
}

}  // namespace

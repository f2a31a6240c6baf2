// The dataset fingerprint a label store records, to notice a dataset changed under it.
#include <xxhash.h>

#include <memory>

#include <fmt/format.h>

#include "fkd/dataset.h"

namespace fkd {

std::string dataset_fingerprint(const Dataset& ds) {
  std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> st(XXH64_createState(),
                                                                &XXH64_freeState);
  XXH64_reset(st.get(), 0);
  std::string line;
  for (size_t i = 0; i < ds.size(); ++i) {
    line = fmt::format("{}\t{}\n", ds.item_name(i), ds.item_bytes(i));
    XXH64_update(st.get(), line.data(), line.size());
  }
  return fmt::format("{:016x}", XXH64_digest(st.get()));
}

}  // namespace fkd

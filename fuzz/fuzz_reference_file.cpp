// libFuzzer target: the reader of the reference implementation's label files. Each input is
// parsed twice: as a whole file (ZIP archive, then pickle), and as the data.pkl of a
// well-formed archive that also holds two storages, so that mutations reach the pickle
// machine instead of stopping at the archive's CRC. Every outcome must be a parsed file or
// an fkd::Error; anything else (crash, sanitizer report, leak, another exception) is a bug.
//
// Build and run as fuzz_shard_reader (fuzz/CMakeLists.txt), with the seeds in
// fuzz/corpus-reference (files torch.save wrote: tests/py/reference_labels.py samples).
#include <cstddef>
#include <cstdint>
#include <string>

#include "fkd/error.h"
#include "fkd/reference_file.h"
#include "store/zip_stored.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    fkd::parse_reference_file(data, size, "fuzz(file)");
  } catch (const fkd::Error&) {
  }
  // A seed file's own pickle is the likeliest input to mutate: take it out of the archive
  // when the input is one, else use the bytes as they are.
  std::string pkl(reinterpret_cast<const char*>(data), size);
  std::string archive = "archive";
  try {
    for (const auto& e : fkd::store::read_zip_stored(data, size, "fuzz")) {
      if (e.name.size() > 9 && e.name.compare(e.name.size() - 9, 9, "/data.pkl") == 0) {
        pkl.assign(reinterpret_cast<const char*>(e.data), e.size);
        archive = e.name.substr(0, e.name.size() - 9);
      }
    }
  } catch (const fkd::Error&) {
  }
  const std::string bytes =
      fkd::store::write_zip_stored({{archive + "/data.pkl", pkl},
                                    {archive + "/data/0", std::string(64, 'a')},
                                    {archive + "/data/1", std::string(7, 'b')},
                                    {archive + "/version", "3\n"}});
  try {
    fkd::parse_reference_file(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                              "fuzz(pickle)");
  } catch (const fkd::Error&) {
  }
  return 0;
}

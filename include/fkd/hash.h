// Content hashes that identify what a label store was made from.
#pragma once
#include <string>

namespace fkd {

class Dataset;

/// Hex XXH3-128 of a file's bytes (a teacher's identity). Throws IoError naming the file.
std::string hash_file_hex(const std::string& path);

/// Hex XXH64 of the train split's ordered "relative path \t bytes \n" lines: changes when
/// an image is added, removed, renamed, reordered or rewritten with another size.
std::string dataset_fingerprint(const Dataset& ds);

}  // namespace fkd

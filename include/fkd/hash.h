// Content hash of a file: the identity of the teacher a label store was made with.
#pragma once
#include <string>

namespace fkd {

/// Hex XXH3-128 of a file's bytes (a teacher's identity). Throws IoError naming the file.
std::string hash_file_hex(const std::string& path);

}  // namespace fkd

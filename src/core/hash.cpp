#include "fkd/hash.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "fkd/error.h"

namespace fkd {

std::string hash_file_hex(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FKD_CHECK(fd >= 0, IoError, "{}: cannot open: {}", path, std::strerror(errno));
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> st(XXH3_createState(),
                                                               &XXH3_freeState);
  XXH3_128bits_reset(st.get());
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      fail<IoError>("{}: cannot read: {}", path, std::strerror(e));
    }
    XXH3_128bits_update(st.get(), buf, size_t(n));
  }
  ::close(fd);
  const XXH128_hash_t h = XXH3_128bits_digest(st.get());
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

}  // namespace fkd

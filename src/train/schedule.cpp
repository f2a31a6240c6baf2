#include "schedule.h"

#include <cmath>

namespace fkd {

double lr_at(double lr, int64_t step, int64_t warmup, int64_t total) {
  if (step < warmup) return lr * double(step + 1) / double(warmup);
  const double span = double(std::max<int64_t>(1, total - warmup));
  const double progress = std::min(1.0, double(step - warmup) / span);
  return 0.5 * lr * (1.0 + std::cos(M_PI * progress));
}

}  // namespace fkd

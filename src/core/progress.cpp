#include "fkd/progress.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

namespace fkd {

namespace {
const char* progress_mode() {
  const char* m = std::getenv("FKD_PROGRESS");
  return m ? m : "";
}
}  // namespace

bool Progress::interactive() {
  const char* m = progress_mode();
  if (std::strcmp(m, "bar") == 0) return true;
  if (std::strcmp(m, "plain") == 0) return false;
  return isatty(STDERR_FILENO) == 1;
}

std::string format_duration(double s) {
  if (s < 0 || s != s) return "?";
  const long t = long(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

Progress::Progress(std::string label, uint64_t total, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_),
      live_(interactive()),
      off_(std::strcmp(progress_mode(), "off") == 0) {}

Progress::~Progress() { finish(); }

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::advance(uint64_t n, const std::string& extra) {
  if (advances_++ == 0) {
    first_advance_ = std::chrono::steady_clock::now();
    done_at_first_ = done_ + n;
  }
  done_ += n;
  extra_ = extra;
  draw(false);
}

double Progress::eta_seconds(std::chrono::steady_clock::time_point now) const {
  // The rate since the first unit was done, once there is one to speak of: start-up time
  // (loading, the first batch) would otherwise inflate the estimate many times over.
  const double span = std::chrono::duration<double>(now - first_advance_).count();
  if (advances_ < 2 || span < kMinEtaSeconds || done_ <= done_at_first_) return -1;
  const double rate = double(done_ - done_at_first_) / span;
  return double(total_ - std::min(done_, total_)) / rate;
}

double Progress::rate(std::chrono::steady_clock::time_point now) const {
  const double el = std::chrono::duration<double>(now - start_).count();
  return el < kMinRateSeconds ? -1 : double(done_) / el;
}

void Progress::draw(bool force) {
  if (off_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  const int decile = total_ ? int(10 * done_ / total_) : 0;
  if (live_) {
    if (!force && since < 0.2 && done_ < total_) return;
  } else if (!force && decile == last_decile_ && since < 30) {
    return;
  }
  last_draw_ = now;
  last_decile_ = decile;
  const double per_s = rate(now);
  const std::string speed = per_s < 0 ? "?" : fmt::format("{:.0f}", per_s);
  const std::string eta = format_duration(eta_seconds(now));
  const double frac = total_ ? double(done_) / double(total_) : 1;
  std::string line;
  if (live_) {
    constexpr int kWidth = 24;
    const int fill = int(frac * kWidth);
    line = fmt::format("\r{} [{}{}] {:3.0f}% {} {}/s ETA {}{}{}\033[K", label_,
                       std::string(size_t(fill), '#'), std::string(size_t(kWidth - fill), '.'),
                       100 * frac, speed, unit_, eta, extra_.empty() ? "" : "  ", extra_);
  } else {
    line = fmt::format("{} {:3.0f}% ({}/{}) {} {}/s ETA {}{}{}\n", label_, 100 * frac, done_,
                       total_, speed, unit_, eta, extra_.empty() ? "" : "  ", extra_);
  }
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

void Progress::finish() {
  if (finished_) return;
  if (live_ && !off_) {
    std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
  }
  finished_ = true;
}

}  // namespace fkd

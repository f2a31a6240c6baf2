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
  done_ += n;
  extra_ = extra;
  draw(false);
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
  const double el = elapsed_seconds();
  const double rate = el > 0 ? double(done_) / el : 0;
  const double eta = rate > 0 ? double(total_ - std::min(done_, total_)) / rate : -1;
  const double frac = total_ ? double(done_) / double(total_) : 1;
  std::string line;
  if (live_) {
    constexpr int kWidth = 24;
    const int fill = int(frac * kWidth);
    line = fmt::format("\r{} [{}{}] {:3.0f}% {:.0f} {}/s ETA {}{}{}\033[K", label_,
                       std::string(size_t(fill), '#'), std::string(size_t(kWidth - fill), '.'),
                       100 * frac, rate, unit_, format_duration(eta), extra_.empty() ? "" : "  ",
                       extra_);
  } else {
    line =
        fmt::format("{} {:3.0f}% ({}/{}) {:.0f} {}/s ETA {}{}{}\n", label_, 100 * frac, done_,
                    total_, rate, unit_, format_duration(eta), extra_.empty() ? "" : "  ", extra_);
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

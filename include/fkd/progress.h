// Progress reporting for long work: a live bar with rate and ETA on a terminal, plain
// lines (about every 10% or 30 s) when stderr is a file or pipe, so logs stay readable.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace fkd {

class Progress {
 public:
  /// total: units of work (e.g. samples); unit: what to call them in the rate ("img").
  Progress(std::string label, uint64_t total, std::string unit);
  ~Progress();
  /// Adds `n` done units; `extra` is shown after the rate (e.g. "loss 0.412").
  void advance(uint64_t n, const std::string& extra = "");
  /// Ends the bar (clears a live bar's line).
  void finish();
  double elapsed_seconds() const;
  /// Seconds left at the rate since the first advance; -1 ("?") until that rate has run
  /// for kMinEtaSeconds over at least two advances.
  double eta_seconds(std::chrono::steady_clock::time_point now) const;
  static constexpr double kMinEtaSeconds = 1.0;
  /// Units per second since construction; -1 ("?") before kMinRateSeconds have passed, when
  /// the time measured is too short to give a rate (a few units done within microseconds
  /// once read as 229902675 img/s).
  double rate(std::chrono::steady_clock::time_point now) const;
  static constexpr double kMinRateSeconds = 0.5;
  /// Whether stderr is a terminal (live bar) or not (plain lines); FKD_PROGRESS=plain|bar|off
  /// overrides.
  static bool interactive();

 private:
  void draw(bool force);
  std::string label_, unit_, extra_;
  uint64_t total_, done_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
  std::chrono::steady_clock::time_point first_advance_;
  uint64_t done_at_first_ = 0;  ///< done_ after the first advance
  uint64_t advances_ = 0;
  int last_decile_ = -1;
  bool live_, off_, finished_ = false;
};

/// "1h02m", "3m07s", "12s"
std::string format_duration(double seconds);

}  // namespace fkd

// The one-command demo on Fashion-MNIST (the embedded default dataset).
#pragma once
#include <string>

namespace fkd {

struct DemoOptions {
  std::string out = "demo-out";  ///< run directory
  bool quick = false;            ///< a shorter schedule (a few minutes)
  int threads = 0;
  int workers = 1;
  std::string device = "cpu";
};

/// Trains a resnet20 teacher on Fashion-MNIST, evaluates it and prints the result.
/// Returns the teacher's top-1 (percent).
double run_demo(const DemoOptions& opts);

}  // namespace fkd

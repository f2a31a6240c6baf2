// LibTorch packages without the RPC/distributed-autograd headers (Debian's libtorch-dev) still
// ship c10d's reducer.hpp, which includes this header for two declarations: the gradient
// callback type it asserts against, and the context pointer of a Reducer member. Only the
// build finds this copy, and only where the package lacks the real one (CMakeLists.txt).
// Both declarations match the real header's, so the Reducer's layout is the library's.
#pragma once
#include <functional>
#include <memory>

#include <ATen/core/Tensor.h>

namespace torch {
namespace distributed {
namespace autograd {

class DistAutogradContext {
 public:
  using GradCallback = std::function<bool(at::Tensor&)>;
};
using ContextPtr = std::shared_ptr<DistAutogradContext>;

}  // namespace autograd
}  // namespace distributed
}  // namespace torch

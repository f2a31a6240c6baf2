// Configure-time check (CMakeLists.txt): compiles and links with -DFKD_C10D_API=N when
// LibTorch's c10d has the API that src/dist/c10d_api.h's variant N and src/dist use.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include "dist/c10d_api.h"

c10::intrusive_ptr<c10d::ProcessGroup> fkd_c10d_check(const c10::intrusive_ptr<c10d::Store>& s,
                                                      std::vector<at::Tensor> params) {
  auto o = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(1000));
  o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
      c10::make_intrusive<c10d::PrefixStore>("gloo", s), 0, 2, o);
  auto group = fkd::c10d_api::as_group(s, 0, 2, gloo, false);
  const std::vector<bool> sparse(params.size(), false);
  auto [buckets, limits] = c10d::compute_bucket_assignment_by_size(params, {1, 2}, sparse);
  c10d::Reducer reducer(params, buckets, limits, group, sparse, 2, false, false, {}, 1);
  reducer.prepare_for_backward({});
  c10d::broadcast_coalesced(group, params, 1, 0);
  return group;
}

int main() { return 0; }

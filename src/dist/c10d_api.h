// The one place where LibTorch versions differ in how a c10d process group is made.
//
// FKD_C10D_API (set by CMakeLists.txt after trying each on the LibTorch it builds against):
//   1  LibTorch 1.x: ProcessGroupGloo and ProcessGroupNCCL are process groups themselves.
//   2  LibTorch 2.0 to about 2.4: they are backends, held by a ProcessGroup made with
//      ProcessGroup::Options naming the backend.
//   3  later 2.x: a ProcessGroup of (store, rank, size) whose default backend is set.
//   0  none of these compiled: fkd builds without data-parallel training.
#pragma once
#include <string>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace fkd::c10d_api {

#if FKD_C10D_API == 1
/// `backend` as the process group of its ranks.
template <typename Backend>
c10::intrusive_ptr<c10d::ProcessGroup> as_group(const c10::intrusive_ptr<c10d::Store>& /*store*/,
                                                int /*rank*/, int /*world*/,
                                                const c10::intrusive_ptr<Backend>& backend,
                                                bool /*cuda*/) {
  return backend;
}
#elif FKD_C10D_API == 2 || FKD_C10D_API == 3
template <typename Backend>
c10::intrusive_ptr<c10d::ProcessGroup> as_group(const c10::intrusive_ptr<c10d::Store>& store,
                                                int rank, int world,
                                                const c10::intrusive_ptr<Backend>& backend,
                                                bool cuda) {
  const auto type =
      cuda ? c10d::ProcessGroup::BackendType::NCCL : c10d::ProcessGroup::BackendType::GLOO;
#if FKD_C10D_API == 2
  auto group = c10::make_intrusive<c10d::ProcessGroup>(
      store, rank, world, c10::make_intrusive<c10d::ProcessGroup::Options>(cuda ? "nccl" : "gloo"));
#else
  auto group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
  group->setDefaultBackend(type);
#endif
  group->setBackend(cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU, type, backend);
  return group;
}
#endif

}  // namespace fkd::c10d_api

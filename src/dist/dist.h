// Data-parallel runs on LibTorch's c10d: the process group of a run's ranks, the checks that
// every rank runs the same thing, and how a rank's failure reaches the others.
//
// Rendezvous goes through c10d's TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 serves it);
// collectives run on Gloo for CPU tensors and on NCCL for CUDA ones (where the LibTorch has
// it). Every wait is bounded by the run's timeout: a rank that dies, hangs or never joins
// makes the others fail within it, with one line saying which rank and what happened.
#pragma once
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "fkd/launch.h"

namespace fkd {

class Distributed {
 public:
  /// Joins the ranks of `env` (with world 1: no group, every operation is the identity);
  /// `timeout_seconds` bounds every rendezvous and collective. `device` picks the backend:
  /// NCCL for CUDA, else Gloo. Throws an Error naming the master address and the ranks that
  /// did not join within the timeout.
  Distributed(const DistEnv& env, double timeout_seconds, const torch::Device& device);
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int rank() const { return env_.rank; }
  int world() const { return env_.world; }
  int local_rank() const { return env_.local_rank; }
  int local_world() const { return env_.local_world; }
  double timeout_seconds() const { return timeout_; }
  bool active() const { return env_.world > 1; }
  bool leader() const { return env_.rank == 0; }
  /// The process group (null with one process).
  const c10::intrusive_ptr<c10d::ProcessGroup>& group() const { return group_; }

  /// Waits for every rank; `what` names the point in messages.
  void barrier(const std::string& what);
  /// Waits for every rank after long work of unequal length (labeling a shard): no time
  /// limit while every rank is alive, but a rank that fails, is killed or stops is named
  /// within seconds.
  void wait_for_all(const std::string& what);
  /// Sums each tensor over the ranks, in place.
  void all_reduce_sum(std::vector<torch::Tensor>& tensors, const std::string& what);
  /// Gives every rank rank 0's values of `tensors`, in place (coalesced into few messages).
  void broadcast_from_leader(const std::vector<torch::Tensor>& tensors, const std::string& what);
  /// Throws WorkMismatch unless every rank passed the same `value`, naming `what`, the first
  /// rank that differs and both values.
  void check_same(const std::string& what, const std::string& value);
  /// Leaves this rank's failure in the store for the others to name, unless it was a
  /// collective that failed because of another rank; never throws.
  void record_failure(const std::string& message) noexcept;

  /// Runs a collective: any failure becomes an Error of one line naming what was under way
  /// and, where the store still answers, the rank that failed first and its own message.
  template <typename Op>
  auto run(const std::string& what, Op&& op) -> decltype(op()) {
    try {
      return op();
    } catch (const std::exception& e) {
      fail_collective(what, e);
    }
  }

 private:
  [[noreturn]] void fail_collective(const std::string& what, const std::exception& e);
  /// Who failed first: a rank that recorded its failure, else the ranks whose heartbeat
  /// stopped (killed or stopped), else "".
  std::string failed_ranks() const;
  /// "rank R failed: its message" for the first other rank that recorded a failure, or "".
  std::string reported_failure() const;
  /// "rank R stopped (...)" naming the other ranks whose heartbeat did not move, or "".
  std::string silent_ranks(const std::vector<int64_t>& before,
                           const std::vector<int64_t>& after) const;
  /// Every rank's heartbeat count.
  std::vector<int64_t> heartbeats() const;

  DistEnv env_;
  double timeout_ = 600;
  c10::intrusive_ptr<c10d::Store> store_;
  /// Each rank counts up its own key about once a second on a connection of its own, so
  /// that a rank that was killed or stopped can be named.
  c10::intrusive_ptr<c10d::Store> heartbeat_store_;
  std::thread heartbeat_;
  std::atomic<bool> stop_{false};
  bool collective_failed_ = false;
  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  int checks_ = 0;  ///< check_same calls so far (keys of each are apart)
  int waits_ = 0;   ///< wait_for_all calls so far
};

}  // namespace fkd

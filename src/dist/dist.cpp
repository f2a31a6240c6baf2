#include "dist.h"

#include <chrono>
#include <cstdlib>
#include <thread>

#include <fmt/core.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if FKD_C10D_API > 0
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>

#include "dist/c10d_api.h"
#endif
#ifdef FKD_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "fkd/error.h"

namespace fkd {

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kHeartbeat = std::chrono::milliseconds(1000);

std::string bytes_to_string(const std::vector<uint8_t>& b) {
  return std::string(b.begin(), b.end());
}
std::vector<uint8_t> string_to_bytes(const std::string& s) { return {s.begin(), s.end()}; }

std::chrono::milliseconds millis(double seconds) {
  return std::chrono::milliseconds(int64_t(seconds * 1000));
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

/// "rank 1 has lr 0.2 where rank 0 has 0.05": for JSON objects, only the keys that differ.
std::string describe_difference(int me, const std::string& mine, int them,
                                const std::string& theirs) {
  const auto a = nlohmann::json::parse(mine, nullptr, /*allow_exceptions=*/false);
  const auto b = nlohmann::json::parse(theirs, nullptr, /*allow_exceptions=*/false);
  if (!a.is_object() || !b.is_object()) {
    return fmt::format("rank {} has {} where rank {} has {}", me, mine, them, theirs);
  }
  auto differing = [](const nlohmann::json& x, const nlohmann::json& y) {
    std::vector<std::string> keys;
    for (auto it = x.begin(); it != x.end(); ++it) {
      if (!y.contains(it.key()) || y[it.key()] != it.value()) {
        keys.push_back(fmt::format("{} {}", it.key(), it.value().dump()));
      }
    }
    return fmt::format("{}", fmt::join(keys, ", "));
  };
  return fmt::format("rank {} has {} where rank {} has {}", me, differing(a, b), them,
                     differing(b, a));
}

/// A connection to the rendezvous store. Under torchrun's agent (agent_store) the agent
/// serves it and every rank is a client using the keys of its attempt, as torch's env://
/// rendezvous does; otherwise rank 0 serves it (`serve`) and every rank connects.
c10::intrusive_ptr<c10d::Store> connect_store(const DistEnv& s, double timeout, bool serve) {
  c10d::TCPStoreOptions o;
  o.port = uint16_t(s.master_port);
  o.isServer = serve && s.rank == 0 && !s.agent_store;
  o.numWorkers = size_t(s.world);
  o.waitWorkers = false;  // fkd's own join below names the ranks that never came
  o.timeout = millis(timeout);
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(s.master_addr, o);
  } catch (const std::exception& e) {
    fail<IoError>("cannot {} the rendezvous store at {}:{} within {} s ({}): {}",
                  o.isServer ? "serve" : "reach", s.master_addr, s.master_port, timeout,
                  o.isServer ? "is the port taken by another run?"
                             : "did rank 0 start, and are MASTER_ADDR and MASTER_PORT rank 0's?",
                  one_line(e.what()));
  }
  if (!s.store_prefix.empty())
    store = c10::make_intrusive<c10d::PrefixStore>(s.store_prefix, store);
  return store;
}

/// Every rank announces itself, then waits until all have: a rank that never comes is named.
void join(c10d::Store& store, const DistEnv& s, double timeout) {
  store.set(fmt::format("joined/{}", s.rank), string_to_bytes("1"));
  store.add("joined", 1);
  const auto deadline = Clock::now() + millis(timeout);
  for (;;) {
    if (store.add("joined", 0) >= s.world) return;
    if (Clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::vector<int> missing;
  for (int r = 0; r < s.world; ++r) {
    if (!store.check({fmt::format("joined/{}", r)})) missing.push_back(r);
  }
  fail<IoError>("{} of {} ranks did not join at {}:{} within {} s (rank {}{})", missing.size(),
                s.world, s.master_addr, s.master_port, timeout, fmt::join(missing, ", "),
                missing.size() == 1 ? " never started or cannot reach the master"
                                    : ": never started or cannot reach the master");
}

c10::intrusive_ptr<c10d::ProcessGroup> make_group(const c10::intrusive_ptr<c10d::Store>& store,
                                                  const DistEnv& s, double timeout,
                                                  const torch::Device& device) {
#if FKD_C10D_API == 0
  (void)store;
  (void)timeout;
  fail<ConfigError>(
      "{} ranks on {}: this fkd was built against a LibTorch whose c10d API it does not know, "
      "so it trains in one process only (see FKD_C10D_API in CMakeLists.txt)",
      s.world, device.str());
#else
  if (device.is_cuda()) {
#ifdef FKD_WITH_NCCL
    auto o = c10d::ProcessGroupNCCL::Options::create();
    o->timeout = millis(timeout);
    auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, s.rank, s.world, o);
    return c10d_api::as_group(store, s.rank, s.world, nccl, /*cuda=*/true);
#else
    fail<ConfigError>(
        "--device {}: this fkd was built without NCCL; distributed GPU training "
        "needs a CUDA LibTorch",
        device.str());
#endif
  }
  auto o = c10d::ProcessGroupGloo::Options::create(millis(timeout));
  // The interface Gloo talks on: GLOO_SOCKET_IFNAME as torch reads it, loopback for one
  // machine, else the one this host's name resolves to.
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifname && *ifname) {
    o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else if (is_loopback(s.master_addr)) {
    o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  } else {
    o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  o->threads = 2;
  auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
      c10::make_intrusive<c10d::PrefixStore>("gloo", store), s.rank, s.world, o);
  return c10d_api::as_group(store, s.rank, s.world, gloo, /*cuda=*/false);
#endif
}

}  // namespace

Distributed::Distributed(const DistEnv& env, double timeout_seconds, const torch::Device& device)
    : env_(env), timeout_(timeout_seconds) {
  FKD_CHECK(env.world >= 1 && env.rank >= 0 && env.rank < env.world, ConfigError,
            "distributed: rank {} of a world of {} does not exist", env.rank, env.world);
  FKD_CHECK(timeout_seconds > 0, ConfigError, "--dist-timeout {}: expected a positive value",
            timeout_seconds);
  if (!active()) return;
  auto tcp = connect_store(env, timeout_, /*serve=*/true);
  store_ = c10::make_intrusive<c10d::PrefixStore>("fkd", tcp);
  try {
    join(*store_, env, timeout_);
    group_ = make_group(tcp, env, timeout_, device);
    heartbeat_store_ = c10::make_intrusive<c10d::PrefixStore>(
        "fkd", connect_store(env, timeout_, /*serve=*/false));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail<IoError>("cannot form the process group of {} ranks at {}:{}: {}", env.world,
                  env.master_addr, env.master_port, one_line(e.what()));
  }
  heartbeat_ = std::thread([this] {
    const std::string key = fmt::format("alive/{}", rank());
    while (!stop_) {
      try {
        heartbeat_store_->add(key, 1);
      } catch (...) {
        return;  // the store is gone (rank 0 stopped): the collectives will say so
      }
      for (int i = 0; i < 10 && !stop_; ++i) std::this_thread::sleep_for(kHeartbeat / 10);
    }
  });
}

Distributed::~Distributed() {
  stop_ = true;
  if (heartbeat_.joinable()) heartbeat_.join();
}

void Distributed::barrier(const std::string& what) {
  if (!active()) return;
  run(what, [&] { group_->barrier()->wait(); });
}

void Distributed::wait_for_all(const std::string& what) {
  if (!active()) return;
  const std::string key = fmt::format("waits/{}", waits_++);
  std::vector<int64_t> beats;
  try {
    store_->add(key, 1);
    beats = heartbeats();
  } catch (const std::exception& e) {
    fail_collective(what, e);
  }
  auto last_beat = Clock::now();
  for (;;) {
    std::string culprit;
    try {
      if (store_->add(key, 0) >= world()) return;
      culprit = reported_failure();
      if (culprit.empty() && Clock::now() - last_beat > kHeartbeat * 5) {
        // A rank whose heartbeat stood still for five beats was killed or stopped.
        const std::vector<int64_t> now = heartbeats();
        culprit = silent_ranks(beats, now);
        beats = now;
        last_beat = Clock::now();
      }
    } catch (const std::exception&) {
      culprit = "rank 0 stopped answering (killed or hung?)";
    }
    if (!culprit.empty()) {
      collective_failed_ = true;
      fail<IoError>("waiting for every rank after {}: {}", what, culprit);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void Distributed::all_reduce_sum(std::vector<torch::Tensor>& tensors, const std::string& what) {
  if (!active()) return;
  run(what, [&] {
    for (torch::Tensor& t : tensors) {
      std::vector<torch::Tensor> one{t};
      group_->allreduce(one)->wait();
    }
  });
}

void Distributed::broadcast_from_leader(const std::vector<torch::Tensor>& tensors,
                                        const std::string& what) {
  if (!active() || tensors.empty()) return;
  torch::NoGradGuard no_grad;  // parameters are written in place
#if FKD_C10D_API > 0
  run(what, [&] { c10d::broadcast_coalesced(group_, tensors, size_t(1) << 24, 0); });
#endif
}

void Distributed::check_same(const std::string& what, const std::string& value) {
  if (!active()) return;
  const std::string key = fmt::format("check/{}/", checks_++);
  run(what, [&] {
    store_->set(key + std::to_string(rank()), string_to_bytes(value));
    // Rank 0 names the first rank that differs; every other rank compares itself with it.
    for (int r = leader() ? 1 : 0; r < (leader() ? world() : 1); ++r) {
      const std::string other = bytes_to_string(store_->get(key + std::to_string(r)));
      FKD_CHECK(other == value, WorkMismatch, "the ranks do not run the same {}: {}", what,
                describe_difference(rank(), value, r, other));
    }
  });
}

void Distributed::record_failure(const std::string& message) noexcept {
  if (!active() || collective_failed_) return;
  try {
    store_->set(fmt::format("failed/{}", rank()), string_to_bytes(message));
  } catch (...) {  // the store may be gone with rank 0: nothing more to do
  }
}

std::vector<int64_t> Distributed::heartbeats() const {
  std::vector<int64_t> beats;
  for (int r = 0; r < world(); ++r)
    beats.push_back(heartbeat_store_->add(fmt::format("alive/{}", r), 0));
  return beats;
}

std::string Distributed::reported_failure() const {
  for (int r = 0; r < world(); ++r) {
    const std::string key = fmt::format("failed/{}", r);
    if (r != rank() && store_->check({key})) {
      return fmt::format("rank {} failed: {}", r, bytes_to_string(store_->get(key)));
    }
  }
  return "";
}

std::string Distributed::silent_ranks(const std::vector<int64_t>& before,
                                      const std::vector<int64_t>& after) const {
  std::vector<int> silent;
  for (int r = 0; r < world(); ++r) {
    if (r != rank() && after[size_t(r)] == before[size_t(r)]) silent.push_back(r);
  }
  if (silent.empty()) return "";
  return fmt::format("rank {} stopped (killed, or stopped by a signal)", fmt::join(silent, ", "));
}

std::string Distributed::failed_ranks() const {
  try {
    std::string culprit = reported_failure();
    if (!culprit.empty()) return culprit;
    // No rank said why: those whose heartbeat stands still were killed or stopped.
    const std::vector<int64_t> before = heartbeats();
    std::this_thread::sleep_for(kHeartbeat * 5 / 2);
    return silent_ranks(before, heartbeats());
  } catch (...) {  // no store: rank 0 is gone
    return "rank 0 stopped answering (killed or hung?)";
  }
}

void Distributed::fail_collective(const std::string& what, const std::exception& e) {
  if (dynamic_cast<const Error*>(&e)) throw;  // fkd's own errors are already one line
  collective_failed_ = true;
  const std::string culprit = failed_ranks();
  fail<IoError>("{} failed within --dist-timeout {} s: {} ({})", what, timeout_,
                culprit.empty() ? "another rank stopped answering (killed or hung?)" : culprit,
                one_line(e.what()));
}

}  // namespace fkd

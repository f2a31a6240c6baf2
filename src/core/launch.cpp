#include "fkd/launch.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "fkd/error.h"

extern char** environ;

namespace fkd {

namespace {

constexpr int kDefaultPort = 29500;  // torchrun's

// --- the environment of a rank -------------------------------------------------------------

/// A variable's value; nullopt when unset or empty (`export RANK=` clears it for a shell user).
std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

bool all_digits(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

/// The whole number `text` of variable `name`, at least `min`.
int parse_count(const char* name, const std::string& text, int min) {
  const bool ok = all_digits(text) && text.size() <= 9 && std::stoi(text) >= min;
  FKD_CHECK(ok, ConfigError, "{}={}: expected a whole number >= {}", name, text, min);
  return std::stoi(text);
}

int parse_port(const char* name, const std::string& text) {
  const bool ok =
      all_digits(text) && text.size() <= 5 && std::stoi(text) >= 1 && std::stoi(text) <= 65535;
  FKD_CHECK(ok, ConfigError, "{}={}: expected a port, 1 to 65535", name, text);
  return std::stoi(text);
}

/// Slurm's run-length list of tasks per node ("2(x3),1": three nodes of 2 tasks, then one of
/// 1) as (tasks, nodes) runs; kept as runs since a repeat may be huge.
std::vector<std::pair<int, int>> parse_tasks_per_node(const char* name, const std::string& text) {
  const std::string bad =
      fmt::format("{}={}: expected task counts per node like 4, 2(x3) or 2(x3),1", name, text);
  std::vector<std::pair<int, int>> runs;
  size_t pos = 0;
  while (true) {
    const size_t end = text.find(',', pos);
    const std::string item = text.substr(pos, end == std::string::npos ? end : end - pos);
    const size_t paren = item.find('(');
    const std::string tasks = item.substr(0, paren);
    std::string nodes = "1";
    if (paren != std::string::npos) {
      const bool closed =
          item.size() > paren + 3 && item.compare(paren, 2, "(x") == 0 && item.back() == ')';
      FKD_CHECK(closed, ConfigError, "{}", bad);
      nodes = item.substr(paren + 2, item.size() - paren - 3);
    }
    const bool ok = all_digits(tasks) && tasks.size() <= 9 && std::stoi(tasks) >= 1 &&
                    all_digits(nodes) && nodes.size() <= 9 && std::stoi(nodes) >= 1;
    FKD_CHECK(ok, ConfigError, "{}", bad);
    runs.emplace_back(std::stoi(tasks), std::stoi(nodes));
    if (end == std::string::npos) return runs;
    pos = end + 1;
  }
}

void check_below(const char* name, int value, const char* bound_name, int bound) {
  FKD_CHECK(value < bound, ConfigError, "{}={} is not below {}={}", name, value, bound_name, bound);
}

/// MASTER_ADDR and MASTER_PORT; `one_node` says whether 127.0.0.1 can stand for rank 0's
/// host, `several_nodes` how the job was seen to span several.
void set_rendezvous(DistEnv& e, bool one_node, const std::string& several_nodes) {
  const auto port = env("MASTER_PORT");
  e.master_port = port ? parse_port("MASTER_PORT", *port) : kDefaultPort;
  if (const auto addr = env("MASTER_ADDR")) {
    e.master_addr = *addr;
    return;
  }
  FKD_CHECK(one_node || e.world == 1, ConfigError,
            "MASTER_ADDR is unset: a job on several nodes ({}) needs the host of rank 0 in "
            "MASTER_ADDR",
            several_nodes);
  e.master_addr = "127.0.0.1";
}

}  // namespace

JobRank job_rank_from_environment() {
  JobRank j;
  const auto rank = env("RANK"), world = env("WORLD_SIZE");
  if (rank || world) {
    FKD_CHECK(rank && world, ConfigError, "{} is set but {} is not (torchrun sets both)",
              rank ? "RANK=" + *rank : "WORLD_SIZE=" + *world, rank ? "WORLD_SIZE" : "RANK");
    j.source = "torchrun";
    j.world = parse_count("WORLD_SIZE", *world, 1);
    j.rank = parse_count("RANK", *rank, 0);
    check_below("RANK", j.rank, "WORLD_SIZE", j.world);
    return j;
  }
  // An salloc shell may set one of SLURM_PROCID/SLURM_NTASKS alone, and is one process.
  const auto procid = env("SLURM_PROCID"), ntasks = env("SLURM_NTASKS");
  if (procid && ntasks) {
    j.source = "slurm";
    j.world = parse_count("SLURM_NTASKS", *ntasks, 1);
    j.rank = parse_count("SLURM_PROCID", *procid, 0);
    check_below("SLURM_PROCID", j.rank, "SLURM_NTASKS", j.world);
  }
  return j;
}

namespace {

/// torchrun's variables (also set by fkd launch); nullopt when RANK and WORLD_SIZE are unset.
std::optional<DistEnv> torchrun_env(const JobRank& j) {
  if (j.source != "torchrun") return std::nullopt;
  DistEnv e;
  e.source = j.source;
  e.world = j.world;
  e.rank = j.rank;
  const auto local_rank = env("LOCAL_RANK"), local_world = env("LOCAL_WORLD_SIZE");
  if (!local_rank && !local_world) {
    // A launcher that names no node layout (a hand-written script): one node.
    e.local_rank = e.rank;
    e.local_world = e.world;
  } else {
    FKD_CHECK(local_rank, ConfigError, "LOCAL_WORLD_SIZE={} is set but LOCAL_RANK is not",
              *local_world);
    e.local_rank = parse_count("LOCAL_RANK", *local_rank, 0);
    // torch.distributed.launch of old set LOCAL_RANK alone; WORLD_SIZE bounds the node's share.
    e.local_world = local_world ? parse_count("LOCAL_WORLD_SIZE", *local_world, 1) : e.world;
    FKD_CHECK(e.local_world <= e.world, ConfigError, "LOCAL_WORLD_SIZE={} exceeds WORLD_SIZE={}",
              e.local_world, e.world);
    check_below("LOCAL_RANK", e.local_rank, "LOCAL_WORLD_SIZE", e.local_world);
  }
  set_rendezvous(e, e.local_world == e.world,
                 fmt::format("LOCAL_WORLD_SIZE={} of WORLD_SIZE={}", e.local_world, e.world));
  // torchrun's agent serves the store on MASTER_PORT itself; a rank 0 that tried to would find
  // the port taken. The spelling is Python's str(True), as torch.distributed compares it.
  if (env("TORCHELASTIC_USE_AGENT_STORE") == std::optional<std::string>("True")) {
    const auto attempt = env("TORCHELASTIC_RESTART_COUNT");
    FKD_CHECK(attempt, ConfigError,
              "TORCHELASTIC_USE_AGENT_STORE=True is set but TORCHELASTIC_RESTART_COUNT is not");
    e.agent_store = true;
    e.store_prefix =
        fmt::format("/worker/attempt_{}", parse_count("TORCHELASTIC_RESTART_COUNT", *attempt, 0));
  }
  return e;
}

/// The tasks of this node in a Slurm job step, and the variable they were read from (`from`);
/// nullopt when no variable tells.
std::optional<int> slurm_tasks_on_this_node(std::string& from) {
  // The step's own layout first: the allocation's may hold more tasks than `srun -n` starts.
  for (const char* name :
       {"SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
    const auto v = env(name);
    if (!v) continue;
    from = fmt::format("{}={}", name, *v);
    const auto runs = parse_tasks_per_node(name, *v);
    const auto node = env("SLURM_NODEID");
    if (!node) {
      // Without the node's index, only a list of equal counts tells.
      for (const auto& run : runs) {
        if (run.first != runs[0].first) return std::nullopt;
      }
      return runs[0].first;
    }
    long skip = parse_count("SLURM_NODEID", *node, 0);
    for (const auto& [tasks, nodes] : runs) {
      if (skip < nodes) return tasks;
      skip -= nodes;
    }
    fail<ConfigError>("SLURM_NODEID={} is past the nodes of {}", *node, from);
  }
  return std::nullopt;
}

/// Slurm's variables in a task of `srun`; nullopt unless SLURM_PROCID and SLURM_NTASKS are both
/// set (an salloc shell may set one of them alone, and is one process).
std::optional<DistEnv> slurm_env(const JobRank& j) {
  if (j.source != "slurm") return std::nullopt;
  DistEnv e;
  e.source = j.source;
  e.world = j.world;
  e.rank = j.rank;
  const auto nnodes = env("SLURM_NNODES");
  const int nodes = nnodes ? parse_count("SLURM_NNODES", *nnodes, 1) : 0;  // 0: unknown
  std::string from;
  const std::optional<int> tasks = slurm_tasks_on_this_node(from);
  if (tasks) {
    FKD_CHECK(*tasks <= e.world, ConfigError, "{} exceeds SLURM_NTASKS={}", from, e.world);
    FKD_CHECK(nodes != 1 || *tasks == e.world, ConfigError,
              "{} differs from SLURM_NTASKS={} on one node (SLURM_NNODES=1)", from, e.world);
    e.local_world = *tasks;
  } else {
    FKD_CHECK(nodes == 1, ConfigError,
              "{}: cannot tell how many tasks run on this node (SLURM_NNODES={}); set "
              "SLURM_NTASKS_PER_NODE or SLURM_NODEID",
              from.empty() ? "SLURM_TASKS_PER_NODE is unset" : from, nnodes.value_or("unset"));
    e.local_world = e.world;
  }
  if (const auto local = env("SLURM_LOCALID")) {
    e.local_rank = parse_count("SLURM_LOCALID", *local, 0);
    FKD_CHECK(e.local_rank < e.local_world, ConfigError,
              "SLURM_LOCALID={} is not below the {} tasks on this node ({})", e.local_rank,
              e.local_world, from.empty() ? fmt::format("SLURM_NTASKS={}", e.world) : from);
  } else {
    FKD_CHECK(e.local_world == e.world, ConfigError,
              "SLURM_LOCALID is unset in a job on several nodes ({})", from);
    e.local_rank = e.rank;
  }
  const bool one_node = nodes ? nodes == 1 : e.local_world == e.world;
  set_rendezvous(e, one_node,
                 nodes ? fmt::format("SLURM_NNODES={}", nodes)
                       : fmt::format("{} of SLURM_NTASKS={}", from, e.world));
  return e;
}

}  // namespace

DistEnv dist_env_from_environment() {
  const JobRank j = job_rank_from_environment();
  if (auto e = torchrun_env(j)) return *e;
  if (auto e = slurm_env(j)) return *e;
  return DistEnv{};
}

// --- the launcher --------------------------------------------------------------------------

namespace {

// The signal handlers only count signals and wake the loop through a pipe (the self-pipe
// trick): whatever thread the kernel picks to run them, all the work happens in launch()'s
// loop, outside any handler.
constexpr int kTerminations[] = {SIGINT, SIGTERM, SIGHUP};
std::atomic<int> g_wake_fd{-1};
std::atomic<int> g_received[NSIG];
std::atomic<bool> g_launching{false};
static_assert(std::atomic<int>::is_always_lock_free, "handlers need lock-free atomics");

extern "C" void count_and_wake(int sig) {
  const int saved = errno;
  g_received[sig].fetch_add(1);
  const int fd = g_wake_fd.load();
  if (fd >= 0) {
    const char byte = 0;
    [[maybe_unused]] const ssize_t n = write(fd, &byte, 1);  // a full pipe wakes the loop too
  }
  errno = saved;
}

/// Our handlers for the terminating signals and SIGCHLD while it lives, and the wake pipe.
class SignalScope {
 public:
  SignalScope() {
    FKD_CHECK(!g_launching.exchange(true), ConfigError,
              "fkd launch: launch() is already running in this process");
    if (pipe2(pipe_, O_CLOEXEC | O_NONBLOCK) != 0) {
      g_launching = false;
      fail<IoError>("fkd launch: cannot create a pipe: {}", std::strerror(errno));
    }
    for (auto& r : g_received) r = 0;
    g_wake_fd = pipe_[1];
    struct sigaction sa = {};
    sa.sa_handler = count_and_wake;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int sig : kTerminations) {
      sigaction(sig, nullptr, &old_[sig]);
      // A signal ignored at the start (nohup's SIGHUP) stays ignored, by the children too.
      if (old_[sig].sa_handler == SIG_IGN) continue;
      sigaction(sig, &sa, nullptr);
      installed_.push_back(sig);
    }
    // Even where the caller ignored SIGCHLD (children reaped by the kernel), we need their status.
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, &old_[SIGCHLD]);
    installed_.push_back(SIGCHLD);
    // Handlers run only where the signals are unblocked: make sure this thread is such a place.
    sigset_t ours;
    sigemptyset(&ours);
    for (int sig : installed_) sigaddset(&ours, sig);
    pthread_sigmask(SIG_UNBLOCK, &ours, &old_mask_);
  }
  ~SignalScope() {
    pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
    for (int sig : installed_) sigaction(sig, &old_[sig], nullptr);
    g_wake_fd = -1;
    close(pipe_[0]);
    close(pipe_[1]);
    g_launching = false;
  }
  SignalScope(const SignalScope&) = delete;
  SignalScope& operator=(const SignalScope&) = delete;

  /// Signals of this kind received since the last call.
  static int take(int sig) { return g_received[sig].exchange(0); }
  /// The signals whose handler is ours (a child resets them before exec).
  const std::vector<int>& installed() const { return installed_; }

  /// Waits until a signal arrives or timeout_ms passes (-1: no limit).
  void wait(int timeout_ms) {
    pollfd p = {pipe_[0], POLLIN, 0};
    if (poll(&p, 1, timeout_ms) > 0) {
      char buf[64];
      while (read(pipe_[0], buf, sizeof buf) > 0) {
      }
    }
    // EINTR: a handler ran; its count is read by the caller.
  }

 private:
  int pipe_[2] = {-1, -1};
  struct sigaction old_[NSIG] = {};
  std::vector<int> installed_;
  sigset_t old_mask_;
};

std::string signal_description(int sig) {
  static const std::pair<int, const char*> kNames[] = {
      {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
      {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
      {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
      {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGXCPU, "SIGXCPU"},
      {SIGXFSZ, "SIGXFSZ"}};
  for (const auto& [n, name] : kNames) {
    if (n == sig) return fmt::format("signal {} ({})", sig, name);
  }
  return fmt::format("signal {}", sig);
}

/// The shell's convention: a process killed by signal N has status 128 + N.
int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

/// This process's environment with torchrun's variables for one rank.
std::vector<std::string> rank_environment(const LaunchOptions& o, int local_rank) {
  const std::pair<const char*, std::string> ours[] = {
      {"RANK", std::to_string(o.node_rank * o.nproc_per_node + local_rank)},
      {"WORLD_SIZE", std::to_string(o.nnodes * o.nproc_per_node)},
      {"LOCAL_RANK", std::to_string(local_rank)},
      {"LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node)},
      {"GROUP_RANK", std::to_string(o.node_rank)},
      {"GROUP_WORLD_SIZE", std::to_string(o.nnodes)},
      {"MASTER_ADDR", o.master_addr},
      {"MASTER_PORT", std::to_string(o.master_port)},
      {"TORCHELASTIC_USE_AGENT_STORE", ""}};  // removed: no agent serves the store here
  std::vector<std::string> out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const auto& [n, v] : ours) replaced = replaced || name == n;
    if (!replaced) out.push_back(entry);
  }
  for (const auto& [n, v] : ours) {
    if (!v.empty()) out.push_back(fmt::format("{}={}", n, v));
  }
  return out;
}

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  bool alive = false;
};

/// The children of one launch(): started, signalled, reaped.
class Ranks {
 public:
  Ranks(const LaunchOptions& o, SignalScope& signals) : o_(o), signals_(signals) {}

  /// Starts every rank; on failure stops those started and throws IoError.
  void start(const std::string& program, const std::vector<std::string>& args) {
    for (int local = 0; local < o_.nproc_per_node; ++local) {
      const std::string problem = start_one(program, args, local);
      if (problem.empty()) continue;
      stop(SIGTERM);
      supervise();
      fail<IoError>("fkd launch: cannot start rank {}: {}",
                    o_.node_rank * o_.nproc_per_node + local, problem);
    }
  }

  /// Waits for every rank (see launch()); returns launch()'s status.
  int supervise() {
    int failed = 0, received = 0, terminations = 0;
    while (true) {
      for (int sig : kTerminations) {
        const int n = SignalScope::take(sig);
        if (n == 0) continue;
        terminations += n;
        if (received == 0) {
          received = sig;
          fmt::print(stderr, "fkd launch: got {}; stopping the ranks\n", signal_description(sig));
        }
        if (terminations > 1) {
          fmt::print(stderr, "fkd launch: asked again; sending SIGKILL\n");
          send(SIGKILL);
        } else {
          stop(sig);
        }
      }
      SignalScope::take(SIGCHLD);  // only wakes the loop; every rank is polled below
      for (Rank& r : ranks_) {
        if (!r.alive) continue;
        int status = 0;
        pid_t got;
        do {
          got = waitpid(r.pid, &status, WNOHANG);
        } while (got < 0 && errno == EINTR);
        if (got == 0) continue;
        r.alive = false;
        // ECHILD: reaped behind our back (a waitpid(-1) elsewhere); its status is lost.
        const int code = got < 0 ? 1 : exit_code(status);
        if (code == 0 || stop_signal_ != 0) continue;  // stopping: the ranks die as asked
        failed = code;
        report_failure(r, got < 0 ? -1 : status);
        stop(SIGTERM);
      }
      if (alive() == 0) break;
      int timeout_ms = -1;
      if (kill_at_) {
        const auto left = std::chrono::duration<double, std::milli>(*kill_at_ - Clock::now());
        if (left.count() <= 0) {
          report_kill();
          send(SIGKILL);
          kill_at_.reset();
          continue;
        }
        timeout_ms = int(std::min(std::ceil(left.count()), double(INT_MAX)));
      }
      signals_.wait(timeout_ms);
    }
    if (failed != 0) return failed;
    return received != 0 ? 128 + received : 0;
  }

 private:
  using Clock = std::chrono::steady_clock;

  /// Sends `sig` to every live rank and starts the grace period, once.
  void stop(int sig) {
    send(sig);
    if (stop_signal_ != 0) return;
    stop_signal_ = sig;
    kill_at_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(o_.grace_seconds));
  }

  /// Forks and execs one rank; "" on success, else why it could not run.
  std::string start_one(const std::string& program, const std::vector<std::string>& args,
                        int local) {
    // Everything the child needs is built before fork: between fork and exec only
    // async-signal-safe calls are allowed (another thread may hold malloc's lock).
    std::vector<std::string> argv_strings = {program};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<std::string> env_strings = rank_environment(o_, local);
    const std::vector<char*> argv = c_strings(argv_strings), envp = c_strings(env_strings);
    int report[2];  // the child writes errno here if exec fails; exec closes it otherwise
    if (pipe2(report, O_CLOEXEC) != 0) return fmt::format("pipe: {}", std::strerror(errno));
    sigset_t all, before;
    sigfillset(&all);
    // Blocked across fork so that no signal runs our handler in the child before exec;
    // pending ones reach the program once it unblocks them.
    pthread_sigmask(SIG_BLOCK, &all, &before);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid == 0) {
      struct sigaction dfl = {};
      dfl.sa_handler = SIG_DFL;
      for (int sig : signals_.installed()) sigaction(sig, &dfl, nullptr);
      // A killed launcher must not leave ranks behind: SIGKILL when it dies, and exit now if
      // it died before this line.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      execve(program.c_str(), argv.data(), envp.data());
      const int err = errno;
      [[maybe_unused]] const ssize_t n = write(report[1], &err, sizeof err);
      _exit(127);
    }
    const int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &before, nullptr);
    close(report[1]);
    if (pid < 0) {
      close(report[0]);
      return fmt::format("fork: {}", std::strerror(fork_errno));
    }
    int err = 0;
    ssize_t n;
    do {
      n = read(report[0], &err, sizeof err);
    } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n <= 0) {  // exec succeeded and closed the pipe
      ranks_.push_back({o_.node_rank * o_.nproc_per_node + local, pid, true});
      return "";
    }
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return fmt::format("{}: {}", program, std::strerror(err));
  }

  int alive() const {
    int n = 0;
    for (const Rank& r : ranks_) n += r.alive;
    return n;
  }

  void send(int sig) {
    for (const Rank& r : ranks_) {
      if (r.alive) kill(r.pid, sig);
    }
  }

  void report_failure(const Rank& r, int status) {
    std::string what = "could not be waited for";
    if (status >= 0 && WIFEXITED(status)) {
      what = fmt::format("exited with status {}", WEXITSTATUS(status));
    } else if (status >= 0 && WIFSIGNALED(status)) {
      what = fmt::format("was killed by {}", signal_description(WTERMSIG(status)));
    }
    fmt::print(stderr, "fkd launch: rank {} (pid {}) {}{}\n", r.rank, r.pid, what,
               alive() > 0 ? "; stopping the other ranks" : "");
  }

  void report_kill() {
    std::string names;
    int n = 0;
    for (const Rank& r : ranks_) {
      if (!r.alive) continue;
      names += fmt::format("{}{} (pid {})", n++ == 0 ? "" : ", ", r.rank, r.pid);
    }
    fmt::print(stderr, "fkd launch: rank{} {} still running {} s after {}; sending SIGKILL\n",
               n > 1 ? "s" : "", names, o_.grace_seconds, signal_description(stop_signal_));
  }

  const LaunchOptions& o_;
  SignalScope& signals_;
  std::vector<Rank> ranks_;
  int stop_signal_ = 0;  ///< the signal that asked the ranks to stop; 0 while they run
  std::optional<Clock::time_point> kill_at_;  ///< end of the grace period
};
void check_launch(const LaunchOptions& o, const std::string& program) {
  FKD_CHECK(o.nproc_per_node >= 1, ConfigError, "--nproc-per-node {}: expected at least 1",
            o.nproc_per_node);
  FKD_CHECK(o.nnodes >= 1, ConfigError, "--nnodes {}: expected at least 1", o.nnodes);
  FKD_CHECK(o.node_rank >= 0 && o.node_rank < o.nnodes, ConfigError,
            "--node-rank {}: expected 0 to {} (--nnodes {})", o.node_rank, o.nnodes - 1, o.nnodes);
  FKD_CHECK(int64_t(o.nnodes) * o.nproc_per_node <= INT_MAX, ConfigError,
            "--nnodes {} x --nproc-per-node {}: too many ranks", o.nnodes, o.nproc_per_node);
  FKD_CHECK(o.master_port >= 1 && o.master_port <= 65535, ConfigError,
            "--master-port {}: expected 1 to 65535", o.master_port);
  FKD_CHECK(!o.master_addr.empty(), ConfigError, "--master-addr: expected a host, got ''");
  FKD_CHECK(o.grace_seconds >= 0 && o.grace_seconds <= 1e6, ConfigError,
            "--grace {}: expected 0 to 1e6 seconds", o.grace_seconds);
  struct stat st = {};
  FKD_CHECK(stat(program.c_str(), &st) == 0, ConfigError, "fkd launch: {}: {}", program,
            std::strerror(errno));
  FKD_CHECK(S_ISREG(st.st_mode) && access(program.c_str(), X_OK) == 0, ConfigError,
            "fkd launch: {}: not an executable file", program);
}

}  // namespace

int launch(const LaunchOptions& o, const std::string& program,
           const std::vector<std::string>& args) {
  check_launch(o, program);
  SignalScope signals;
  Ranks ranks(o, signals);
  ranks.start(program, args);
  return ranks.supervise();
}

std::string self_executable() {
  std::string path(256, '\0');
  while (true) {
    const ssize_t n = readlink("/proc/self/exe", path.data(), path.size());
    FKD_CHECK(n >= 0, IoError, "/proc/self/exe: cannot read the link: {}", std::strerror(errno));
    if (size_t(n) < path.size()) {
      path.resize(size_t(n));
      return path;
    }
    path.resize(path.size() * 2);
  }
}

}  // namespace fkd

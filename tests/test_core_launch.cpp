// Where a process stands in a distributed job (torchrun's and Slurm's variables), and the
// launcher that starts, signals and reaps the ranks of one node. The ranks here are /bin/sh
// scripts that write what they saw into files; waits are bounded, never timed.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "fkd/error.h"
#include "fkd/launch.h"
#include "testutil.h"

using fkd::ConfigError;
using fkd::dist_env_from_environment;
using fkd::DistEnv;
using fkd::LaunchOptions;
using fkd::test::error_message;
using fkd::test::read_file;
using fkd::test::TempDir;
using fkd::test::write_file;

namespace {

/// Clears every variable a launcher sets, then sets `vars`; restores all of them when it dies,
/// so neither the test's own environment (a CI job under Slurm) nor one test leaks into another.
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::vector<std::pair<std::string, std::string>>& vars) {
    for (const char* name :
         {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
          "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
          "SLURM_NODEID", "SLURM_NNODES", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
          "SLURM_STEP_TASKS_PER_NODE", "TORCHELASTIC_USE_AGENT_STORE",
          "TORCHELASTIC_RESTART_COUNT"}) {
      save(name);
      unsetenv(name);
    }
    for (const auto& [name, value] : vars) {
      save(name);
      setenv(name.c_str(), value.c_str(), 1);
    }
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) {
        setenv(it->first.c_str(), it->second->c_str(), 1);
      } else {
        unsetenv(it->first.c_str());
      }
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  void save(const std::string& name) {
    const char* v = std::getenv(name.c_str());
    saved_.emplace_back(name, v ? std::optional<std::string>(v) : std::nullopt);
  }
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

DistEnv detect(const std::vector<std::pair<std::string, std::string>>& vars) {
  ScopedEnv env(vars);
  return dist_env_from_environment();
}

}  // namespace

TEST(DistEnv, WithoutALauncherIsOneProcess) {
  const DistEnv e = detect({});
  EXPECT_EQ(e.source, "");
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.world, 1);
  EXPECT_EQ(e.local_rank, 0);
  EXPECT_EQ(e.local_world, 1);
  EXPECT_FALSE(e.distributed());
}

TEST(DistEnv, TorchrunVariables) {
  const DistEnv e = detect({{"RANK", "3"},
                            {"WORLD_SIZE", "4"},
                            {"LOCAL_RANK", "1"},
                            {"LOCAL_WORLD_SIZE", "2"},
                            {"MASTER_ADDR", "node0"},
                            {"MASTER_PORT", "1234"}});
  EXPECT_EQ(e.source, "torchrun");
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world, 4);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world, 2);
  EXPECT_EQ(e.master_addr, "node0");
  EXPECT_EQ(e.master_port, 1234);
  EXPECT_TRUE(e.distributed());
}

TEST(DistEnv, UnderTorchrunItsAgentServesTheStore) {
  // What torch.distributed.run 1.13 sets for a rank (measured), agent store included.
  const DistEnv e = detect({{"RANK", "0"},
                            {"WORLD_SIZE", "2"},
                            {"LOCAL_RANK", "0"},
                            {"LOCAL_WORLD_SIZE", "2"},
                            {"GROUP_RANK", "0"},
                            {"GROUP_WORLD_SIZE", "1"},
                            {"MASTER_ADDR", "127.0.0.1"},
                            {"MASTER_PORT", "29500"},
                            {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                            {"TORCHELASTIC_RESTART_COUNT", "2"}});
  EXPECT_TRUE(e.agent_store);
  EXPECT_EQ(e.store_prefix, "/worker/attempt_2");
  const DistEnv own = detect({{"RANK", "0"}, {"WORLD_SIZE", "2"}});
  EXPECT_FALSE(own.agent_store);
  EXPECT_EQ(own.store_prefix, "");
}

TEST(DistEnv, WorldSizeOneIsASingleProcess) {
  const DistEnv e = detect({{"RANK", "0"}, {"WORLD_SIZE", "1"}});
  EXPECT_EQ(e.source, "torchrun");
  EXPECT_EQ(e.world, 1);
  EXPECT_FALSE(e.distributed());
}

TEST(DistEnv, WithoutNodeLayoutOrRendezvousTheJobIsOnThisNode) {
  const DistEnv e = detect({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world, 2);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, 29500);
  // On several nodes, rank 0's host cannot be guessed.
  const std::string m = error_message<ConfigError>([] {
    detect({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"}});
  });
  EXPECT_NE(m.find("MASTER_ADDR"), std::string::npos) << m;
}

TEST(DistEnv, TorchrunVariablesWinOverSlurms) {
  // fkd launch or torchrun inside a Slurm allocation: the launcher's layout counts.
  const DistEnv e = detect({{"RANK", "1"},
                            {"WORLD_SIZE", "2"},
                            {"SLURM_PROCID", "0"},
                            {"SLURM_NTASKS", "1"},
                            {"SLURM_NNODES", "1"}});
  EXPECT_EQ(e.source, "torchrun");
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world, 2);
}

TEST(DistEnv, SlurmTaskLayouts) {
  struct Case {
    std::vector<std::pair<std::string, std::string>> vars;
    int local_world;
  };
  const std::vector<std::pair<std::string, std::string>> job = {{"SLURM_PROCID", "4"},
                                                                {"SLURM_NTASKS", "7"},
                                                                {"SLURM_LOCALID", "0"},
                                                                {"SLURM_NNODES", "4"},
                                                                {"MASTER_ADDR", "n0"}};
  const std::vector<Case> cases = {
      {{{"SLURM_TASKS_PER_NODE", "2(x3),1"}, {"SLURM_NODEID", "2"}}, 2},
      {{{"SLURM_TASKS_PER_NODE", "2(x3),1"}, {"SLURM_NODEID", "3"}}, 1},
      {{{"SLURM_TASKS_PER_NODE", "3,1(x2),2"}, {"SLURM_NODEID", "3"}}, 2},
      {{{"SLURM_TASKS_PER_NODE", "2(x3)"}}, 2},  // equal counts need no SLURM_NODEID
      {{{"SLURM_NTASKS_PER_NODE", "2"}, {"SLURM_TASKS_PER_NODE", "4(x2)"}}, 2},
      // The step's layout first: the allocation may hold more tasks than srun started.
      {{{"SLURM_STEP_TASKS_PER_NODE", "1(x4)"},
        {"SLURM_NTASKS_PER_NODE", "2"},
        {"SLURM_TASKS_PER_NODE", "2(x4)"}},
       1},
  };
  for (const Case& c : cases) {
    auto vars = job;
    vars.insert(vars.end(), c.vars.begin(), c.vars.end());
    const DistEnv e = detect(vars);
    EXPECT_EQ(e.source, "slurm");
    EXPECT_EQ(e.rank, 4);
    EXPECT_EQ(e.world, 7);
    EXPECT_EQ(e.local_rank, 0);
    EXPECT_EQ(e.local_world, c.local_world) << c.vars[0].second;
    EXPECT_EQ(e.master_addr, "n0");
    EXPECT_EQ(e.master_port, 29500);
  }
}

TEST(DistEnv, SlurmOnOneNodeNeedsNoRendezvousVariables) {
  const DistEnv e = detect({{"SLURM_PROCID", "2"},
                            {"SLURM_NTASKS", "3"},
                            {"SLURM_LOCALID", "2"},
                            {"SLURM_NNODES", "1"},
                            {"MASTER_PORT", "29600"}});
  EXPECT_EQ(e.source, "slurm");
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_world, 3);  // no count per node: one node holds them all
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, 29600);
}

TEST(DistEnv, SlurmOnSeveralNodesNeedsMasterAddr) {
  const std::string m = error_message<ConfigError>([] {
    detect({{"SLURM_PROCID", "0"},
            {"SLURM_NTASKS", "4"},
            {"SLURM_LOCALID", "0"},
            {"SLURM_NNODES", "2"},
            {"SLURM_TASKS_PER_NODE", "2(x2)"}});
  });
  EXPECT_NE(m.find("MASTER_ADDR is unset"), std::string::npos) << m;
  EXPECT_NE(m.find("SLURM_NNODES=2"), std::string::npos) << m;
}

TEST(DistEnv, SlurmShellOutsideAJobStepIsOneProcess) {
  // An salloc shell may set SLURM_NTASKS without SLURM_PROCID.
  const DistEnv e = detect({{"SLURM_NTASKS", "4"}, {"SLURM_NNODES", "1"}});
  EXPECT_EQ(e.source, "");
  EXPECT_FALSE(e.distributed());
}

TEST(DistEnv, InconsistentValuesAreOneLineNamingTheVariable) {
  struct Case {
    std::vector<std::pair<std::string, std::string>> vars;
    std::string expected;  ///< in the message
  };
  const std::vector<std::pair<std::string, std::string>> slurm = {
      {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_NNODES", "2"}, {"MASTER_ADDR", "n0"}};
  auto with_slurm = [&](std::vector<std::pair<std::string, std::string>> more) {
    more.insert(more.begin(), slurm.begin(), slurm.end());
    return more;
  };
  const std::vector<Case> cases = {
      {{{"RANK", "2"}, {"WORLD_SIZE", "2"}}, "RANK=2 is not below WORLD_SIZE=2"},
      {{{"RANK", "-1"}, {"WORLD_SIZE", "2"}}, "RANK=-1: expected a whole number >= 0"},
      {{{"RANK", "one"}, {"WORLD_SIZE", "2"}}, "RANK=one: expected a whole number"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "0"}}, "WORLD_SIZE=0: expected a whole number >= 1"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "99999999999"}}, "WORLD_SIZE=99999999999"},
      {{{"RANK", "0"}}, "RANK=0 is set but WORLD_SIZE is not"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}},
       "TORCHELASTIC_RESTART_COUNT is not"},
      {{{"WORLD_SIZE", "2"}}, "WORLD_SIZE=2 is set but RANK is not"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}},
       "MASTER_PORT=70000: expected a port, 1 to 65535"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "0"}}, "MASTER_PORT=0"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "http"}}, "MASTER_PORT=http"},
      {{{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}},
       "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2"},
      {{{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "4"}},
       "LOCAL_WORLD_SIZE=4 exceeds WORLD_SIZE=2"},
      {{{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_WORLD_SIZE", "2"}},
       "LOCAL_WORLD_SIZE=2 is set but LOCAL_RANK is not"},
      {{{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "4"}},
       "SLURM_PROCID=4 is not below SLURM_NTASKS=4"},
      {{{"SLURM_PROCID", "x"}, {"SLURM_NTASKS", "4"}}, "SLURM_PROCID=x"},
      {with_slurm({{"SLURM_LOCALID", "0"}, {"SLURM_TASKS_PER_NODE", "2(x"}}),
       "SLURM_TASKS_PER_NODE=2(x: expected task counts per node"},
      {with_slurm({{"SLURM_LOCALID", "0"}, {"SLURM_TASKS_PER_NODE", "2(y2)"}}),
       "SLURM_TASKS_PER_NODE=2(y2)"},
      {with_slurm({{"SLURM_LOCALID", "0"}, {"SLURM_TASKS_PER_NODE", "0,4"}}),
       "SLURM_TASKS_PER_NODE=0,4"},
      {with_slurm(
           {{"SLURM_LOCALID", "0"}, {"SLURM_TASKS_PER_NODE", "2(x2)"}, {"SLURM_NODEID", "2"}}),
       "SLURM_NODEID=2 is past the nodes of SLURM_TASKS_PER_NODE=2(x2)"},
      {with_slurm({{"SLURM_LOCALID", "2"}, {"SLURM_TASKS_PER_NODE", "2(x2)"}}),
       "SLURM_LOCALID=2 is not below the 2 tasks on this node"},
      // Counts differ per node and nothing says which node this is.
      {with_slurm({{"SLURM_LOCALID", "0"}, {"SLURM_TASKS_PER_NODE", "3,1"}}),
       "SLURM_TASKS_PER_NODE=3,1: cannot tell how many tasks run on this node"},
      {with_slurm({{"SLURM_LOCALID", "0"}, {"SLURM_NTASKS_PER_NODE", "8"}}),
       "SLURM_NTASKS_PER_NODE=8 exceeds SLURM_NTASKS=4"},
  };
  for (const Case& c : cases) {
    const std::string m = error_message<ConfigError>([&] { detect(c.vars); });
    EXPECT_NE(m.find(c.expected), std::string::npos)
        << "expected: " << c.expected << "\ngot: " << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

// --- the launcher --------------------------------------------------------------------------

namespace {

/// An executable /bin/sh script in `dir`; its first argument is `dir`.
std::string write_script(const TempDir& dir, const std::string& body) {
  const std::string path = dir.file("rank.sh");
  write_file(path, "#!/bin/sh\nd=\"$1\"\n" + body);
  chmod(path.c_str(), 0755);
  return path;
}

/// Whether `path` exists and holds `text` within a generous bound (the ranks are slow only on
/// a loaded machine).
bool wait_for_file(const std::string& path, const std::string& text = "") {
  for (int i = 0; i < 6000; ++i) {
    if (std::filesystem::exists(path) && read_file(path).find(text) != std::string::npos) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

/// The exit status of process `pid`, reaped; -1 (and the process killed) if it has not ended
/// within a generous bound.
int wait_bounded(pid_t pid) {
  for (int i = 0; i < 6000; ++i) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid, SIGKILL);  // its ranks die with it (PR_SET_PDEATHSIG)
  waitpid(pid, nullptr, 0);
  return -1;
}

/// launch() in a child process of its own, which the test can signal, its stderr going to
/// the file `err`; returns its pid.
pid_t launch_in_child(const LaunchOptions& o, const std::string& program,
                      const std::vector<std::string>& args, const std::string& err) {
  const pid_t pid = fork();
  if (pid == 0) {
    int code = 250;
    FILE* f = fopen(err.c_str(), "w");
    if (f == nullptr || dup2(fileno(f), 2) < 0) _exit(code);
    try {
      code = fkd::launch(o, program, args);
    } catch (...) {
    }
    _exit(code);
  }
  return pid;
}

/// True when this process has no child left, running or unreaped.
bool no_children_left() {
  errno = 0;
  return waitpid(-1, nullptr, WNOHANG) == -1 && errno == ECHILD;
}

/// True when process `pid` no longer exists (a zombie still does).
bool gone(const std::string& pid_file) {
  const pid_t pid = std::stoi(read_file(pid_file));
  return kill(pid, 0) == -1 && errno == ESRCH;
}

/// What `f` writes to stderr (fd 2).
template <typename F>
std::string capture_stderr(const TempDir& dir, F&& f) {
  const std::string path = dir.file("stderr.txt");
  fflush(stderr);
  const int saved = dup(2);
  FILE* out = fopen(path.c_str(), "w");
  dup2(fileno(out), 2);
  f();
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  fclose(out);
  return read_file(path);
}

// Rank 0 waits, and on a terminating signal writes its name to sig.0 and ends; it records its
// pid first. Rank 1 waits for rank 0 to be ready, then does ACTION.
std::string waiting_rank0_and(const std::string& action) {
  return "if [ \"$LOCAL_RANK\" = 1 ]; then\n"
         "  i=0; while [ ! -f \"$d/ready.0\" ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); "
         "done\n  " +
         action +
         "\nfi\n"
         "trap 'echo TERM > \"$d/sig.0\"; kill $p; exit 0' TERM\n"
         "sleep 60 & p=$!\n"
         "echo $$ > \"$d/pid.0\"\n"
         "touch \"$d/ready.0\"\n"
         "wait $p\n";
}

}  // namespace

TEST(Launch, EachRankGetsTorchrunsEnvironment) {
  TempDir d;
  const std::string script = write_script(
      d,
      "echo \"$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $GROUP_RANK $GROUP_WORLD_SIZE "
      "$MASTER_ADDR $MASTER_PORT $2 $FKD_TEST_KEPT ${TORCHELASTIC_USE_AGENT_STORE-unset}\" > "
      "\"$d/env.$RANK\"\n");
  // A stale RANK in the launcher's environment is replaced, an agent store dropped; the rest
  // is passed on.
  ScopedEnv env(
      {{"RANK", "7"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"FKD_TEST_KEPT", "kept"}});
  LaunchOptions o;
  o.nproc_per_node = 2;
  o.nnodes = 3;
  o.node_rank = 1;
  o.master_addr = "node0";
  o.master_port = 1234;
  EXPECT_EQ(fkd::launch(o, script, {d.path(), "with space"}), 0);
  EXPECT_EQ(read_file(d.file("env.2")), "2 6 0 2 1 3 node0 1234 with space kept unset\n");
  EXPECT_EQ(read_file(d.file("env.3")), "3 6 1 2 1 3 node0 1234 with space kept unset\n");
  EXPECT_EQ(fkd::test::list_dir(d.path()), (std::vector<std::string>{"env.2", "env.3", "rank.sh"}));
  EXPECT_TRUE(no_children_left());
}

namespace {

/// A TCP port that was free a moment ago.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(fd);
  return ok ? ntohs(a.sin_port) : 29511;
}

/// NAME=VALUE lines (as `env` prints them) as a map.
std::map<std::string, std::string> parse_env(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

}  // namespace

TEST(Launch, RanksSeeWhatTorchrunsRanksSee) {
  // torch.distributed.run from python3-torch is the oracle: each launcher's ranks dump their
  // environment. (Debian 12's torchrun, PyTorch 1.13 on Python 3.11, fails at start unless
  // --redirects and --tee are maps; a map for a rank that does not exist redirects nothing.)
  TempDir d;
  const int port = free_port();
  const auto torchrun = fkd::test::run_command(fmt::format(
      "{} -m torch.distributed.run --nproc_per_node 2 --master_port {} --monitor_interval 0.1 "
      "--no_python --redirects 9:0 --tee 9:0 /bin/sh -c 'env > \"$0/torchrun.$RANK\"' {} 2>&1",
      FKD_PYTHON, port, d.path()));
  ASSERT_EQ(torchrun.status, 0) << torchrun.out;
  const std::string script = write_script(d, "env > \"$d/fkd.$RANK\"\n");
  LaunchOptions o;
  o.nproc_per_node = 2;
  o.master_port = port;
  ASSERT_EQ(fkd::launch(o, script, {d.path()}), 0);
  for (int rank = 0; rank < 2; ++rank) {
    auto theirs = parse_env(read_file(d.file("torchrun." + std::to_string(rank))));
    auto ours = parse_env(read_file(d.file("fkd." + std::to_string(rank))));
    for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                             "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) {
      EXPECT_EQ(ours[name], theirs[name]) << name << " of rank " << rank;
    }
    // What torchrun's rank finds, its agent serving the store.
    std::vector<std::pair<std::string, std::string>> vars;
    for (const auto& [name, value] : theirs) {
      if (name.rfind("SLURM_", 0) != 0) vars.emplace_back(name, value);
    }
    const DistEnv e = detect(vars);
    EXPECT_EQ(e.source, "torchrun");
    EXPECT_EQ(e.rank, rank);
    EXPECT_EQ(e.world, 2);
    EXPECT_EQ(e.local_rank, rank);
    EXPECT_EQ(e.local_world, 2);
    EXPECT_EQ(e.master_port, port);
    EXPECT_TRUE(e.agent_store);
    EXPECT_EQ(e.store_prefix, "/worker/attempt_0");
  }
}

TEST(Launch, ARankThatFailsStopsTheOthersAndGivesItsStatus) {
  TempDir d;
  const std::string script = write_script(d, waiting_rank0_and("exit 3"));
  LaunchOptions o;
  o.nproc_per_node = 2;
  int status = -1;
  const std::string err = capture_stderr(d, [&] { status = fkd::launch(o, script, {d.path()}); });
  EXPECT_EQ(status, 3);
  EXPECT_EQ(read_file(d.file("sig.0")), "TERM\n");  // rank 0 was asked to stop, and did
  EXPECT_TRUE(gone(d.file("pid.0")));
  EXPECT_TRUE(no_children_left());
  EXPECT_TRUE(std::regex_match(
      err, std::regex("fkd launch: rank 1 \\(pid [0-9]+\\) exited with status 3; stopping the "
                      "other ranks\n")))
      << err;
}

TEST(Launch, ARankKilledBySignalGives128PlusTheSignal) {
  TempDir d;
  const std::string script = write_script(d, waiting_rank0_and("kill -9 $$"));
  LaunchOptions o;
  o.nproc_per_node = 2;
  int status = -1;
  const std::string err = capture_stderr(d, [&] { status = fkd::launch(o, script, {d.path()}); });
  EXPECT_EQ(status, 128 + 9);
  EXPECT_EQ(read_file(d.file("sig.0")), "TERM\n");
  EXPECT_TRUE(gone(d.file("pid.0")));
  EXPECT_NE(err.find("rank 1 (pid "), std::string::npos) << err;
  EXPECT_NE(err.find("was killed by signal 9 (SIGKILL); stopping the other ranks"),
            std::string::npos)
      << err;
}

TEST(Launch, SignalsToTheLauncherAreForwardedToEveryRank) {
  for (const auto& [sig, name] : {std::pair{SIGTERM, "TERM"}, std::pair{SIGINT, "INT"}}) {
    TempDir d;
    const std::string script =
        write_script(d,
                     "trap 'echo TERM > \"$d/sig.$RANK\"; kill $p; exit 0' TERM\n"
                     "trap 'echo INT > \"$d/sig.$RANK\"; kill $p; exit 0' INT\n"
                     "sleep 60 & p=$!\n"
                     "touch \"$d/ready.$RANK\"\n"
                     "wait $p\n");
    LaunchOptions o;
    o.nproc_per_node = 2;
    const std::string err = d.file("launcher.err");
    const pid_t launcher = launch_in_child(o, script, {d.path()}, err);
    ASSERT_TRUE(wait_for_file(d.file("ready.0")) && wait_for_file(d.file("ready.1")));
    kill(launcher, sig);
    // The ranks end cleanly on the signal; the launcher reports having been stopped by it.
    EXPECT_EQ(wait_bounded(launcher), 128 + sig) << name;
    EXPECT_EQ(read_file(err),
              fmt::format("fkd launch: got signal {} (SIG{}); stopping the ranks\n", sig, name));
    EXPECT_EQ(read_file(d.file("sig.0")), std::string(name) + "\n");
    EXPECT_EQ(read_file(d.file("sig.1")), std::string(name) + "\n");
  }
}

TEST(Launch, RanksThatIgnoreSigtermAreKilledAfterTheGracePeriod) {
  TempDir d;
  const std::string script = write_script(
      d,
      "if [ \"$LOCAL_RANK\" = 1 ]; then\n"
      "  i=0; while [ ! -f \"$d/ready.0\" ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done\n"
      "  exit 3\n"
      "fi\n"
      "trap '' TERM\n"
      "echo $$ > \"$d/pid.0\"\n"
      "touch \"$d/ready.0\"\n"
      "exec sleep 600\n");
  LaunchOptions o;
  o.nproc_per_node = 2;
  o.grace_seconds = 0.2;
  // Without SIGKILL the launcher would wait for rank 0's 600 s and fail the bounded wait.
  const std::string err = d.file("launcher.err");
  EXPECT_EQ(wait_bounded(launch_in_child(o, script, {d.path()}, err)), 3);
  EXPECT_TRUE(gone(d.file("pid.0")));
  const std::string pid0 = std::to_string(std::stoi(read_file(d.file("pid.0"))));
  const std::string killed = "fkd launch: rank 0 (pid " + pid0 +
                             ") still running 0.2 s after signal 15 (SIGTERM); sending SIGKILL\n";
  EXPECT_NE(read_file(err).find(killed), std::string::npos) << read_file(err);
}

TEST(Launch, ASecondSignalKillsAtOnce) {
  TempDir d;
  const std::string script = write_script(d,
                                          "trap '' TERM\n"
                                          "touch \"$d/ready.$RANK\"\n"
                                          "exec sleep 600\n");
  LaunchOptions o;
  o.nproc_per_node = 2;
  o.grace_seconds = 1e5;
  const std::string err = d.file("launcher.err");
  const pid_t launcher = launch_in_child(o, script, {d.path()}, err);
  ASSERT_TRUE(wait_for_file(d.file("ready.0")) && wait_for_file(d.file("ready.1")));
  kill(launcher, SIGTERM);
  // Two signals sent at once may arrive as one: the second follows the first's handling.
  ASSERT_TRUE(wait_for_file(err, "stopping the ranks"));
  kill(launcher, SIGTERM);
  EXPECT_EQ(wait_bounded(launcher), 128 + SIGTERM);
}

TEST(Launch, RanksDieWithAKilledLauncher) {
  TempDir d;
  const std::string script = write_script(d,
                                          "echo $$ > \"$d/pid.$RANK\"\n"
                                          "touch \"$d/ready.$RANK\"\n"
                                          "exec sleep 600\n");
  LaunchOptions o;
  o.nproc_per_node = 2;
  const pid_t launcher = launch_in_child(o, script, {d.path()}, d.file("launcher.err"));
  ASSERT_TRUE(wait_for_file(d.file("ready.0")) && wait_for_file(d.file("ready.1")));
  kill(launcher, SIGKILL);
  waitpid(launcher, nullptr, 0);
  // The orphans are reaped by whoever adopts them, which may not be at once: a zombie counts.
  auto dead = [](const std::string& pid_file) {
    const std::string pid = std::to_string(std::stoi(read_file(pid_file)));
    for (int i = 0; i < 6000; ++i) {
      std::ifstream stat("/proc/" + pid + "/stat");
      std::string line;
      if (!std::getline(stat, line)) return true;
      if (line.substr(line.rfind(')') + 2, 1) == "Z") return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  };
  EXPECT_TRUE(dead(d.file("pid.0")));
  EXPECT_TRUE(dead(d.file("pid.1")));
}

TEST(Launch, OptionsAndProgramAreCheckedBeforeAnyRankStarts) {
  TempDir d;
  const std::string script = write_script(d, "touch \"$d/ran\"\n");
  write_file(d.file("not-executable"), "#!/bin/sh\n");
  struct Case {
    LaunchOptions o;
    std::string program, expected;
  };
  auto with = [](auto set) {
    LaunchOptions o;
    set(o);
    return o;
  };
  const std::vector<Case> cases = {
      {with([](LaunchOptions& o) { o.nproc_per_node = 0; }), script, "--nproc-per-node 0"},
      {with([](LaunchOptions& o) { o.nnodes = 0; }), script, "--nnodes 0"},
      {with([](LaunchOptions& o) {
         o.nnodes = 2;
         o.node_rank = 2;
       }),
       script, "--node-rank 2: expected 0 to 1"},
      {with([](LaunchOptions& o) { o.node_rank = -1; }), script, "--node-rank -1"},
      {with([](LaunchOptions& o) { o.master_port = 0; }), script, "--master-port 0"},
      {with([](LaunchOptions& o) { o.master_port = 65536; }), script, "--master-port 65536"},
      {with([](LaunchOptions& o) { o.grace_seconds = -1; }), script, "--grace -1"},
      {LaunchOptions{}, d.file("missing"), "missing: No such file or directory"},
      {LaunchOptions{}, d.file("not-executable"), "not-executable: not an executable file"},
      {LaunchOptions{}, d.path(), "not an executable file"},
  };
  for (const Case& c : cases) {
    const std::string m =
        error_message<ConfigError>([&] { fkd::launch(c.o, c.program, {d.path()}); });
    EXPECT_NE(m.find(c.expected), std::string::npos)
        << "expected: " << c.expected << "\ngot: " << m;
  }
  EXPECT_FALSE(std::filesystem::exists(d.file("ran")));
}

TEST(Launch, AProgramThatCannotRunStopsTheStartedRanks) {
  TempDir d;
  // Executable, but neither a script nor a binary: execve refuses it (ENOEXEC).
  const std::string bad = d.file("garbage");
  write_file(bad, std::string("\x7f"
                              "ELF garbage",
                              12));
  chmod(bad.c_str(), 0755);
  LaunchOptions o;
  o.nproc_per_node = 2;
  const std::string m = error_message<fkd::IoError>([&] { fkd::launch(o, bad, {}); });
  EXPECT_NE(m.find("cannot start rank 0"), std::string::npos) << m;
  EXPECT_NE(m.find("garbage: Exec format error"), std::string::npos) << m;
  EXPECT_TRUE(no_children_left());
}

TEST(Launch, SignalHandlersAreRestored) {
  TempDir d;
  const std::string script = write_script(d, "exit 0\n");
  struct sigaction mine = {}, before = {}, after = {};
  mine.sa_handler = [](int) {};
  sigaction(SIGTERM, &mine, &before);
  EXPECT_EQ(fkd::launch(LaunchOptions{}, script, {d.path()}), 0);
  sigaction(SIGTERM, &before, &after);
  EXPECT_EQ(after.sa_handler, mine.sa_handler);
  // A second launch in the same process works: the first released everything.
  EXPECT_EQ(fkd::launch(LaunchOptions{}, script, {d.path()}), 0);
}

TEST(Launch, SelfExecutableIsThisProgram) {
  const std::string self = fkd::self_executable();
  EXPECT_EQ(std::filesystem::path(self).filename(), "test_core_launch");
  EXPECT_TRUE(std::filesystem::equivalent(self, "/proc/self/exe"));
}

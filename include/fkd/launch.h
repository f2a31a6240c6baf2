// Many processes of one program, the way the ecosystem runs them: where a process finds its
// place among the others (DistEnv, from torchrun's or Slurm's environment), and fkd's own
// launcher (launch(), behind `fkd launch`) for machines with neither.
//
// A rank is one process of a distributed job; ranks 0..world-1 exist across all nodes, and
// the ranks of one node are numbered 0..local_world-1 among themselves. Rank 0 hosts the
// rendezvous at master_addr:master_port.
#pragma once
#include <string>
#include <vector>

namespace fkd {

/// Where this process stands in a distributed job.
struct DistEnv {
  int rank = 0;             ///< this process, 0..world-1
  int world = 1;            ///< processes in the job, all nodes together
  int local_rank = 0;       ///< this process among those of its node (picks its GPU)
  int local_world = 1;      ///< processes on this node
  std::string master_addr;  ///< host of the rendezvous store (c10d TCPStore); "" if source ""
  int master_port = 0;      ///< its TCP port; 0 if source ""
  std::string source;       ///< "torchrun" (also fkd launch), "slurm", or "" (single process)
  /// torchrun's agent already serves the store at master_addr:master_port
  /// (TORCHELASTIC_USE_AGENT_STORE=True): every rank, 0 included, connects as a client and
  /// uses the keys under store_prefix, as torch.distributed's env:// rendezvous does. Otherwise
  /// rank 0 serves the store and the others connect.
  bool agent_store = false;
  std::string store_prefix;  ///< "/worker/attempt_N" (TORCHELASTIC_RESTART_COUNT) or ""
  bool distributed() const { return world > 1; }
};

/// This process's rank in its job and the job's size, by the first two rules of
/// dist_env_from_environment below (the same parser): RANK/WORLD_SIZE, else
/// SLURM_PROCID/SLURM_NTASKS, else {0, 1} with source "". For work that shards without a
/// rendezvous (fkd label); the same ConfigErrors for the same variables.
struct JobRank {
  int rank = 0;        ///< this process, 0..world-1
  int world = 1;       ///< processes in the job
  std::string source;  ///< "torchrun", "slurm" or ""
};
JobRank job_rank_from_environment();

/// The job this process belongs to, from its environment, first match wins:
/// - RANK and WORLD_SIZE (torchrun, `fkd launch`), with LOCAL_RANK, LOCAL_WORLD_SIZE,
///   MASTER_ADDR, MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE and TORCHELASTIC_RESTART_COUNT.
///   Without LOCAL_RANK/LOCAL_WORLD_SIZE the job is taken to be on one node (local = global).
/// - SLURM_PROCID and SLURM_NTASKS (a task of `srun`), with SLURM_LOCALID and the tasks on
///   this node from SLURM_NTASKS_PER_NODE, else SLURM_STEP_TASKS_PER_NODE or
///   SLURM_TASKS_PER_NODE ("2(x3),1": counts per node, picked by SLURM_NODEID), else, on one
///   node (SLURM_NNODES=1), all tasks. Slurm names no rendezvous: MASTER_ADDR and MASTER_PORT
///   come from the environment (set them in the batch script).
/// - Otherwise one process: DistEnv{} with source "".
/// Under either launcher MASTER_PORT defaults to 29500, and MASTER_ADDR to 127.0.0.1 when
/// every rank is on this node; a job on several nodes needs MASTER_ADDR. An empty variable
/// counts as unset. WORLD_SIZE=1 is a valid job of one process.
/// ConfigError, one line naming the variable and its value, for anything inconsistent: a
/// value that is not a whole number or is negative, a rank not below its world size, a port
/// outside 1..65535, one of RANK/WORLD_SIZE without the other, a malformed task count.
DistEnv dist_env_from_environment();

/// The ranks `fkd launch` starts on this node.
struct LaunchOptions {
  int nproc_per_node = 1;                 ///< ranks on this node, >= 1
  int nnodes = 1;                         ///< nodes of the job, each running its own launcher
  int node_rank = 0;                      ///< this node, 0..nnodes-1
  std::string master_addr = "127.0.0.1";  ///< host of rank 0 (on node 0)
  int master_port = 29500;                ///< rendezvous port, 1..65535
  double grace_seconds = 10;              ///< from SIGTERM to SIGKILL for ranks that do not stop
};

/// Runs nproc_per_node copies of `program` (a path, run as is with argv = {program, args...})
/// and waits for all of them. Each child gets this process's environment with torchrun's
/// variables set: RANK = node_rank * nproc_per_node + local rank, WORLD_SIZE = nnodes *
/// nproc_per_node, LOCAL_RANK, LOCAL_WORLD_SIZE = nproc_per_node, GROUP_RANK = node_rank,
/// GROUP_WORLD_SIZE = nnodes, MASTER_ADDR, MASTER_PORT (and no TORCHELASTIC_USE_AGENT_STORE:
/// rank 0 serves the store).
///
/// Returns 0 when every child exits with status 0. When one exits non-zero or is killed, one
/// line on stderr names it ("fkd launch: rank 1 (pid 1234) exited with status 3; stopping the
/// other ranks"), the others get SIGTERM, then SIGKILL after grace_seconds, and the first
/// failed child's status is returned (128 + N for signal N). SIGINT, SIGTERM and SIGHUP sent
/// to this process are forwarded to every child (a second one sends SIGKILL); those that
/// outlive grace_seconds get SIGKILL, and the return is 128 + the signal (unless a child had
/// failed before). A signal this process ignored when launch() began (nohup's SIGHUP) stays
/// ignored, by it and by the children. Children get SIGKILL if the thread that called launch()
/// dies first (PR_SET_PDEATHSIG), so none outlives a killed launcher.
///
/// Installs its own handlers for SIGINT, SIGTERM, SIGHUP and SIGCHLD while it runs and
/// restores the previous ones on return; one launch() at a time per process. Every child is
/// reaped before it returns. ConfigError for invalid options (named) or a `program` that is not
/// an executable file; IoError when a child cannot be started (the others are stopped first).
int launch(const LaunchOptions& o, const std::string& program,
           const std::vector<std::string>& args);

/// The path of the running executable (/proc/self/exe resolved), for a program that launches
/// copies of itself. IoError if it cannot be read.
std::string self_executable();

}  // namespace fkd

// fkd: fast knowledge distillation. All logic lives in the library; see fkd/cli.h.
#include "fkd/allocator.h"
#include "fkd/cli.h"

int main(int argc, char** argv) {
  // Before anything allocates: large tensor buffers must stay in the heap (allocator.h).
  fkd::configure_malloc();
  return fkd::run_cli(argc, argv);
}

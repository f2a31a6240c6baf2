// fkd: fast knowledge distillation. All logic lives in the library; see fkd/cli.h.
#include <malloc.h>

#include "fkd/cli.h"

int main(int argc, char** argv) {
  // glibc's default thresholds make large tensor buffers round-trip through mmap/munmap,
  // a page-fault storm in training and inference loops: keep them in the heap.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  return fkd::run_cli(argc, argv);
}

"""The glibc malloc settings fkd runs with (fkd::configure_malloc, include/fkd/allocator.h),
for the python3-torch baselines: without them glibc hands every large tensor fresh mmap'd
pages, and a ratio to fkd would measure glibc, not the pipelines.

GLIBC_TUNABLES is read at process start-up, so apply() re-executes the running script with
it set, before torch is imported. A GLIBC_TUNABLES already set is left as it is.
"""
import os
import sys

FKD_MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def apply():
    if "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = FKD_MALLOC_TUNABLES
        os.execv(sys.executable, [sys.executable] + sys.argv)


def describe():
    return "GLIBC_TUNABLES=" + os.environ.get("GLIBC_TUNABLES", "(unset)")

// Precompiled header for the torch side of the library: torch's headers cost
// about 10 s per translation unit; compiled once here, each file pays ~1 s.
#pragma once
#include <torch/script.h>
#include <torch/torch.h>

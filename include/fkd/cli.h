// The `fkd` command line: parses flags into the library's config structs and calls it.
#pragma once

namespace fkd {

/// Runs the fkd command line; returns the process exit status. Errors are printed as
/// one line ("fkd: error: ...") and give status 1; usage errors give 2.
int run_cli(int argc, char** argv);

}  // namespace fkd

// Chooses the instruction-set build of the CPU loops at import time.
#pragma once

#include <string>
#include <vector>

#include "cpu/kernel_table.h"

namespace fusedopt {
namespace cpu {

struct TargetInfo {
  std::string name;
  bool built;      // compiled into this module
  bool supported;  // this CPU (and OS) can run it
};

// Targets from lowest to highest.
std::vector<TargetInfo> list_targets();
// The table in use: the highest supported target, or the one forced by
// FUSEDOPT_CPU_TARGET (which may only lower the choice) or by select_target().
const KernelTable& active_table();
// Forces a target by name; throws std::invalid_argument if unknown, not built or not
// supported here. "auto" restores the automatic choice.
void select_target(const std::string& name);
// Where the choice came from: "auto", "FUSEDOPT_CPU_TARGET", or "select_target".
std::string target_source();

}  // namespace cpu
}  // namespace fusedopt

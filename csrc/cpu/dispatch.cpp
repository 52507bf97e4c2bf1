#include "cpu/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace fusedopt {
namespace cpu {
namespace {

struct Target {
  const char* name;
  const KernelTable* table;  // nullptr when not built
  bool (*supported)();
};

bool always() { return true; }

#if defined(__x86_64__) || defined(_M_X64)
// __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV).
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("bmi2");
}
bool has_avx512() {
  __builtin_cpu_init();
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512cd");
}
#endif

const std::vector<Target>& all_targets() {
  static const std::vector<Target> targets = {
      {"baseline", &kernel_table_baseline(), always},
#if defined(FUSEDOPT_HAVE_avx2)
      {"avx2", &kernel_table_avx2(), has_avx2},
#endif
#if defined(FUSEDOPT_HAVE_avx512)
      {"avx512", &kernel_table_avx512(), has_avx512},
#endif
  };
  return targets;
}

const Target* find_target(const std::string& name) {
  for (const Target& t : all_targets())
    if (name == t.name) return &t;
  return nullptr;
}

const Target& best_supported() {
  const Target* best = &all_targets().front();
  for (const Target& t : all_targets())
    if (t.supported()) best = &t;
  return *best;
}

struct Choice {
  const KernelTable* table;
  const char* source;
};

Choice initial_choice() {
  const Target& best = best_supported();
  const char* env = std::getenv("FUSEDOPT_CPU_TARGET");
  if (env == nullptr || *env == '\0' || std::string(env) == "auto") return {best.table, "auto"};
  const Target* forced = find_target(env);
  // An unknown or unsupported name must not crash the import; the Python layer reports it
  // (fusedopt.info()["cpu"]["target_error"]) and keeps the automatic choice.
  if (forced == nullptr || !forced->supported()) return {best.table, "auto (FUSEDOPT_CPU_TARGET ignored)"};
  return {forced->table, "FUSEDOPT_CPU_TARGET"};
}

Choice& choice() {
  static Choice c = initial_choice();
  return c;
}

}  // namespace

std::vector<TargetInfo> list_targets() {
  std::vector<TargetInfo> out;
  for (const char* name : {"baseline", "avx2", "avx512"}) {
    const Target* t = find_target(name);
    out.push_back({name, t != nullptr, t != nullptr && t->supported()});
  }
  return out;
}

const KernelTable& active_table() { return *choice().table; }

void select_target(const std::string& name) {
  if (name == "auto") {
    choice() = {best_supported().table, "auto"};
    return;
  }
  const Target* t = find_target(name);
  if (t == nullptr) throw std::invalid_argument("CPU target '" + name + "' is not built into this module");
  if (!t->supported()) throw std::invalid_argument("CPU target '" + name + "' is not supported by this CPU");
  choice() = {t->table, "select_target"};
}

std::string target_source() { return choice().source; }

}  // namespace cpu
}  // namespace fusedopt

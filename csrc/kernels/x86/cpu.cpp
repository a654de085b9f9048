// cpuid checks for the x86 paths (compiled without any target flags).
#include "x86_kernels.h"

namespace patsparse {

bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && cpu_has_avx2_fma();
}

}  // namespace patsparse

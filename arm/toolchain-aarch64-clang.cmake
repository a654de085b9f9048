# CMake toolchain file: as toolchain-aarch64-linux-gnu.cmake, but compiled by clang (the compiler of the
# Android NDK) targeting aarch64-linux-gnu, with Debian's cross libstdc++ (g++-aarch64-linux-gnu).
#   cmake -S . -B build/arm-clang -DCMAKE_TOOLCHAIN_FILE=arm/toolchain-aarch64-clang.cmake
include(${CMAKE_CURRENT_LIST_DIR}/toolchain-aarch64-linux-gnu.cmake)
set(PATSPARSE_CLANG_VERSION "19" CACHE STRING "clang major version (clang-N, clang++-N)")
set(CMAKE_C_COMPILER clang-${PATSPARSE_CLANG_VERSION})
set(CMAKE_CXX_COMPILER clang++-${PATSPARSE_CLANG_VERSION})
set(CMAKE_C_COMPILER_TARGET ${PATSPARSE_AARCH64_PREFIX})
set(CMAKE_CXX_COMPILER_TARGET ${PATSPARSE_AARCH64_PREFIX})

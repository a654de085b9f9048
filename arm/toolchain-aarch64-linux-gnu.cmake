# CMake toolchain file: cross-compile for 64-bit ARM Linux with Debian's g++-aarch64-linux-gnu,
# and run the tests (ctest) under qemu-aarch64 with the target's sysroot.
#   cmake -S . -B build/arm -DCMAKE_TOOLCHAIN_FILE=arm/toolchain-aarch64-linux-gnu.cmake
# For Android use the NDK's toolchain file instead (docs/MOBILE.md).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(PATSPARSE_AARCH64_PREFIX "aarch64-linux-gnu" CACHE STRING "Cross compiler prefix")
set(CMAKE_C_COMPILER ${PATSPARSE_AARCH64_PREFIX}-gcc)
set(CMAKE_CXX_COMPILER ${PATSPARSE_AARCH64_PREFIX}-g++)

set(PATSPARSE_AARCH64_SYSROOT "/usr/${PATSPARSE_AARCH64_PREFIX}" CACHE PATH "Target sysroot (for qemu -L)")
set(CMAKE_FIND_ROOT_PATH ${PATSPARSE_AARCH64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# ARMv8-A: Advanced SIMD (NEON) is mandatory, so no extra -m flags are needed.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L ${PATSPARSE_AARCH64_SYSROOT})

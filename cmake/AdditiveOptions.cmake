# Build flags for our own executables (tests, examples, benchmarks, the header check),
# as INTERFACE targets that those executables link PRIVATE. Nothing here ever reaches the
# exported target additive::additive: a consumer chooses its own warnings and -march.
#
#   additive_dev_flags     warnings (+ -Werror), and ASan/UBSan when ADDITIVE_SANITIZE
#   additive_native_flags  -march=native when ADDITIVE_NATIVE
#
# The flags are wrapped in $<COMPILE_LANGUAGE:CXX> so that CUDA sources linking the same
# targets receive none of them; CUDA sources get their own set ($<COMPILE_LANGUAGE:CUDA>).
include_guard(GLOBAL)

add_library(additive_dev_flags INTERFACE)
target_compile_options(additive_dev_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall;-Wextra;-Wpedantic>)
if(ADDITIVE_WARNINGS_AS_ERRORS)
  target_compile_options(additive_dev_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
endif()

# Known false positives of GCC 12.1/12.2 (Debian 12 ships 12.2), fixed in 12.3. Both are
# located in system headers and exposed by inlining, so they cannot be fixed in our code:
# - PR 105651: -Wrestrict on `"literal" + std::string&&` (basic_string::_M_replace) at -O2+.
# - PR 105593: "'__Y' may be used uninitialized" inside GCC's own AVX-512 intrinsics when
#   Eigen is compiled with -march=native on an AVX-512 machine.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 12.3
   AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12)
  target_compile_options(additive_dev_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wno-restrict>)
  if(ADDITIVE_NATIVE)
    target_compile_options(additive_dev_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized>)
  endif()
endif()

if(ADDITIVE_SANITIZE)
  set(additive_sanitize_flags
    -fsanitize=address,undefined
    -fno-omit-frame-pointer
    -fno-sanitize-recover=all)
  target_compile_options(additive_dev_flags INTERFACE
    "$<$<COMPILE_LANGUAGE:CXX>:${additive_sanitize_flags}>")
  target_link_options(additive_dev_flags INTERFACE ${additive_sanitize_flags})
endif()

# CUDA sources (the .cu tests and the .cuh header check): nvcc's own warnings and the host
# compiler's -Wall -Wextra (not -Wpedantic: nvcc's generated host code uses GNU line
# markers), errors under ADDITIVE_WARNINGS_AS_ERRORS. No sanitizers: ASan and the CUDA
# runtime do not mix.
# Suppressed diagnostics of nvcc's front end: 20012 and 20015 are Eigen 3.4's own under
# nvcc without --expt-relaxed-constexpr (which additive::cuda cannot use, see the top-level
# CMakeLists.txt); Eigen reaches .cu files through the CPU headers the tests compare with.
# 445 fires on C++20 template lambdas whose template parameter is given explicitly
# (`fn.template operator()<B>()`, the dispatch tables).
target_compile_options(additive_dev_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra;-diag-suppress=20012,20015,445>)
if(ADDITIVE_WARNINGS_AS_ERRORS)
  target_compile_options(additive_dev_flags INTERFACE
    $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings;-Xcompiler=-Werror>)
endif()
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 12.3
   AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12)
  target_compile_options(additive_dev_flags INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wno-restrict>)
endif()

add_library(additive_native_flags INTERFACE)
if(ADDITIVE_NATIVE)
  target_compile_options(additive_native_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
endif()

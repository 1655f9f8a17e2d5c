# FindNCCL: NVIDIA's collective communication library (nccl.h + libnccl).
#
# Looks next to the CUDA toolkit first (CUDAToolkit_INCLUDE_DIRS / CUDAToolkit_LIBRARY_DIR,
# when find_package(CUDAToolkit) ran), then under NCCL_ROOT / $NCCL_HOME / $NCCL_ROOT, then
# the system paths (Debian's libnccl-dev). Defines:
#
#   NCCL_FOUND, NCCL_INCLUDE_DIR, NCCL_LIBRARY, NCCL_VERSION (from NCCL_MAJOR/MINOR/PATCH)
#   NCCL::NCCL   imported target (shared library + include directory)
#
# Installed next to additiveConfig.cmake, which uses it to recreate NCCL::NCCL for the
# exported additive::nccl.
include_guard(GLOBAL)

find_path(NCCL_INCLUDE_DIR nccl.h
  HINTS ${CUDAToolkit_INCLUDE_DIRS} ${NCCL_ROOT} ENV NCCL_HOME ENV NCCL_ROOT
  PATH_SUFFIXES include)
find_library(NCCL_LIBRARY nccl
  HINTS ${CUDAToolkit_LIBRARY_DIR} ${NCCL_ROOT} ENV NCCL_HOME ENV NCCL_ROOT
  PATH_SUFFIXES lib lib64)

if(NCCL_INCLUDE_DIR AND EXISTS "${NCCL_INCLUDE_DIR}/nccl.h")
  file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" nccl_version_lines REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) +[0-9]+")
  foreach(part MAJOR MINOR PATCH)
    string(REGEX MATCH "NCCL_${part} +([0-9]+)" _ "${nccl_version_lines}")
    set(nccl_${part} "${CMAKE_MATCH_1}")
  endforeach()
  set(NCCL_VERSION "${nccl_MAJOR}.${nccl_MINOR}.${nccl_PATCH}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(NCCL
  REQUIRED_VARS NCCL_LIBRARY NCCL_INCLUDE_DIR
  VERSION_VAR NCCL_VERSION)
mark_as_advanced(NCCL_INCLUDE_DIR NCCL_LIBRARY)

if(NCCL_FOUND AND NOT TARGET NCCL::NCCL)
  add_library(NCCL::NCCL UNKNOWN IMPORTED)
  set_target_properties(NCCL::NCCL PROPERTIES
    IMPORTED_LOCATION "${NCCL_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
endif()

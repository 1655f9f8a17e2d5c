# Packaging tests, run in script mode by ctest (see tests/CMakeLists.txt):
#
#   MODE=install       cmake --install the build tree into WORK_DIR/prefix, then configure,
#                      build and run tests/cmake_consumer against that prefix only.
#   MODE=subdirectory  configure, build and run tests/cmake_consumer/subdir, which does
#                      add_subdirectory(<source tree>).
#
# Inputs: MODE, WORK_DIR, ADDITIVE_SOURCE_DIR, ADDITIVE_BINARY_DIR, CONSUMER_GENERATOR,
# CONSUMER_CXX_COMPILER, CONSUMER_CONFIG.
cmake_minimum_required(VERSION 3.25)

foreach(var IN ITEMS MODE WORK_DIR ADDITIVE_SOURCE_DIR ADDITIVE_BINARY_DIR CONSUMER_GENERATOR
                     CONSUMER_CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT CONSUMER_CONFIG)
  set(CONSUMER_CONFIG Release)
endif()

# Runs a command, echoing it, and stops the test on failure.
function(run_step what)
  string(JOIN " " printable ${ARGN})
  message(STATUS "[${MODE}_consumer] ${what}: ${printable}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[${MODE}_consumer] ${what} failed (${rc})")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(consumer_build "${WORK_DIR}/build")
set(configure_args
  -G "${CONSUMER_GENERATOR}"
  -DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}
  -DCMAKE_BUILD_TYPE=${CONSUMER_CONFIG})

if(MODE STREQUAL "install")
  set(prefix "${WORK_DIR}/prefix")
  run_step("install" "${CMAKE_COMMAND}" --install "${ADDITIVE_BINARY_DIR}" --prefix "${prefix}"
           --config "${CONSUMER_CONFIG}")
  foreach(required IN ITEMS
      include/additive/core/params.hpp
      share/cmake/additive/additiveConfig.cmake
      share/cmake/additive/additiveConfigVersion.cmake
      share/cmake/additive/additiveTargets.cmake)
    if(NOT EXISTS "${prefix}/${required}")
      message(FATAL_ERROR "[install_consumer] the install lacks ${required}")
    endif()
  endforeach()
  run_step("configure" "${CMAKE_COMMAND}" -S "${ADDITIVE_SOURCE_DIR}/tests/cmake_consumer"
           -B "${consumer_build}" ${configure_args}
           "-DCMAKE_PREFIX_PATH=${prefix}"
           -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
  # The consumer must have found the package in the prefix, not in the build tree.
  file(STRINGS "${consumer_build}/CMakeCache.txt" found_dir REGEX "^additive_DIR:")
  string(REGEX REPLACE "^additive_DIR:[A-Z]+=" "" found_dir "${found_dir}")
  file(REAL_PATH "${found_dir}" found_dir)
  file(REAL_PATH "${prefix}/share/cmake/additive" expected_dir)
  if(NOT found_dir STREQUAL expected_dir)
    message(FATAL_ERROR "[install_consumer] found additive in ${found_dir}, expected ${expected_dir}")
  endif()
elseif(MODE STREQUAL "subdirectory")
  run_step("configure" "${CMAKE_COMMAND}" -S "${ADDITIVE_SOURCE_DIR}/tests/cmake_consumer/subdir"
           -B "${consumer_build}" ${configure_args}
           "-DADDITIVE_ROOT=${ADDITIVE_SOURCE_DIR}")
else()
  message(FATAL_ERROR "run.cmake: unknown MODE '${MODE}' (install or subdirectory)")
endif()

run_step("build" "${CMAKE_COMMAND}" --build "${consumer_build}" --config "${CONSUMER_CONFIG}")

find_program(consumer_exe consumer PATHS "${consumer_build}" "${consumer_build}/${CONSUMER_CONFIG}"
             NO_DEFAULT_PATH REQUIRED)
run_step("run" "${consumer_exe}")
message(STATUS "[${MODE}_consumer] passed")

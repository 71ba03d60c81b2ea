# Installs the build tree to a staging prefix, compiles native/examples/example.c against the
# installed header and shared library only, runs it, and fails on any non-zero exit.
# Run by ctest (native/tests/CMakeLists.txt) as:
#   cmake -DBUILD_DIR=... -DSTAGE=... -DC_COMPILER=... -DEXAMPLE_SOURCE=... -DLIBDIR=lib
#         -DINCLUDEDIR=include [-DC_FLAGS="the project's CMAKE_C_FLAGS"] [-DCONFIG=Release]
#         [-DEMULATOR=qemu-aarch64|-L|/sysroot] -P check_installed_example.cmake
cmake_minimum_required(VERSION 3.18)

foreach(var BUILD_DIR STAGE C_COMPILER EXAMPLE_SOURCE LIBDIR INCLUDEDIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "check_installed_example.cmake: -D${var}=... is required")
  endif()
endforeach()

# A fresh staging prefix: nothing left over from an earlier install can satisfy the link.
file(REMOVE_RECURSE "${STAGE}")
set(install_command "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${STAGE}")
if(CONFIG)
  list(APPEND install_command --config "${CONFIG}")
endif()
execute_process(COMMAND ${install_command} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed (${rc}):\n${out}")
endif()

set(include_dir "${STAGE}/${INCLUDEDIR}")
set(lib_dir "${STAGE}/${LIBDIR}")
# Both public headers: the API, and the interface for backend libraries (which includes qkernels.h).
foreach(header qkernels.h qkernels_backend.h)
  if(NOT EXISTS "${include_dir}/${header}")
    message(FATAL_ERROR "the install has no ${include_dir}/${header}")
  endif()
endforeach()
if(NOT EXISTS "${lib_dir}/libqkernels.so")
  file(GLOB_RECURSE found "${STAGE}/libqkernels.so")
  message(FATAL_ERROR "the install has no ${lib_dir}/libqkernels.so (found: ${found})")
endif()

# Strict C11, warnings as errors: the installed header must be clean for users' builds too. The
# project's own CMAKE_C_FLAGS come along (a sanitizer build's library needs them at link time).
separate_arguments(c_flags UNIX_COMMAND "${C_FLAGS}")
set(exe "${STAGE}/example")
execute_process(
  COMMAND "${C_COMPILER}" ${c_flags} -std=c11 -pedantic -Wall -Wextra -Werror
          -I "${include_dir}" "${EXAMPLE_SOURCE}" -o "${exe}"
          -L "${lib_dir}" -lqkernels "-Wl,-rpath,${lib_dir}" -lm
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "compiling the example against the installed library failed (${rc}):\n${out}")
endif()

set(run_command "${exe}")
if(EMULATOR)
  string(REPLACE "|" ";" emulator "${EMULATOR}")
  set(run_command ${emulator} "${exe}")
endif()
execute_process(COMMAND ${run_command} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the example exited with ${rc}")
endif()

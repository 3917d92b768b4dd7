# Settings shared by tessera's own tests, benchmarks and examples (never by consumers).

# tessera_dev: what every in-tree program links: the library, warnings, and the instruction set:
# TESSERA_MARCH when set (CI builds the suite for x86-64, haswell and native), else -march=native
# when TESSERA_NATIVE is on.
add_library(tessera_dev INTERFACE)
target_link_libraries(tessera_dev INTERFACE tessera::tessera)
if(TESSERA_MARCH)
  target_compile_options(tessera_dev INTERFACE -march=${TESSERA_MARCH})
  message(STATUS "tessera: tests, benchmarks and examples built with -march=${TESSERA_MARCH}")
elseif(TESSERA_NATIVE)
  target_link_libraries(tessera_dev INTERFACE tessera::native)
endif()
# TESSERA_TEST_COMPILED: the tests (tests/CMakeLists.txt) link tessera::compiled, whose library
# holds the kernels (at the level chosen at run time or forced with TESSERA_CPU_CAPABILITY) and
# the modules' instantiations, instead of compiling them header-only: the suite builds in about
# half the time. On by default where the library is built; the benchmarks and examples stay
# header-only (the benchmarks' *_portable programs link the library).
option(TESSERA_TEST_COMPILED "Build tessera's own tests in the compiled mode (tessera::compiled)" ${TESSERA_BUILD_COMPILED})
if(TESSERA_TEST_COMPILED)
  if(NOT TARGET tessera::compiled)
    message(FATAL_ERROR "TESSERA_TEST_COMPILED needs TESSERA_BUILD_COMPILED")
  endif()
  message(STATUS "tessera: tests in the compiled mode (tessera::compiled; TESSERA_TEST_COMPILED)")
else()
  message(STATUS "tessera: tests header-only (TESSERA_TEST_COMPILED=OFF)")
endif()
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  # Designated initialisers that leave members at their defaults are how options are passed.
  target_compile_options(tessera_dev INTERFACE -Wall -Wextra -Wpedantic -Wno-missing-field-initializers)
endif()
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  # GCC 12 false positives: (maybe-)uninitialized inside its own AVX-512 intrinsics headers
  # (the _mm512_undefined_* idiom Eigen's transposes use) and -Wrestrict on std::string
  # concatenation (GCC bug 105329).
  target_compile_options(tessera_dev INTERFACE -Wno-maybe-uninitialized -Wno-uninitialized -Wno-restrict)
endif()


# tessera_input_targets(<source> <out_targets> <out_missing>): the input-layer targets
# (cmake/tesseraInputs.cmake) a test, benchmark or example needs, read from the tessera/text,
# tessera/image, tessera/audio and tessera/distributed headers it includes. <out_missing> names
# those this system lacks; the caller skips the program, with a message, when it is not empty.
function(tessera_input_targets src out_targets out_missing)
  file(STRINGS ${src} includes REGEX "#include [<\"]tessera/(text|image|audio)/")
  # An include added later re-runs this at the next build.
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${src})
  set(targets "")
  set(missing "")
  foreach(line ${includes})
    string(REGEX MATCH "tessera/(text|image|audio)/([A-Za-z0-9_]+)" header "${line}")
    set(layer ${CMAKE_MATCH_1})
    if(CMAKE_MATCH_2 MATCHES "^sentencepiece")
      set(layer sentencepiece)
    endif()
    if(TARGET tessera::${layer})
      list(APPEND targets tessera::${layer})
    else()
      list(APPEND missing tessera::${layer})
    endif()
  endforeach()
  # tessera/distributed runs over MPI where tessera::mpi exists, as a single process elsewhere.
  file(STRINGS ${src} distributed REGEX "#include [<\"]tessera/distributed/")
  if(distributed AND TARGET tessera::mpi)
    list(APPEND targets tessera::mpi)
  endif()
  list(REMOVE_DUPLICATES targets)
  list(REMOVE_DUPLICATES missing)
  set(${out_targets} ${targets} PARENT_SCOPE)
  set(${out_missing} ${missing} PARENT_SCOPE)
endfunction()

# tessera_mpiexec(<out>): the command that starts an MPI job of tessera's own tests and examples,
# to be followed by ${MPIEXEC_NUMPROC_FLAG} <n> <program>. With Open MPI: more ranks than cores
# allowed (--oversubscribe, no binding) and, when configured as root (CI), --allow-run-as-root.
function(tessera_mpiexec out)
  set(launch ${MPIEXEC_EXECUTABLE} ${MPIEXEC_PREFLAGS})
  execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE version ERROR_QUIET)
  if(version MATCHES "Open MPI|OpenRTE")
    list(APPEND launch --oversubscribe --bind-to none)
    execute_process(COMMAND id -u OUTPUT_VARIABLE uid OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(uid STREQUAL "0")
      list(APPEND launch --allow-run-as-root)
    endif()
  endif()
  set(${out} ${launch} PARENT_SCOPE)
endfunction()

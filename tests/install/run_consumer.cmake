# Builds and runs the consumer project in tests/install/ against tessera, either installed into a
# temporary prefix and found with find_package (MODE=find_package), or pulled in with
# add_subdirectory (MODE=add_subdirectory). Any failing step fails the test.
cmake_minimum_required(VERSION 3.20)
foreach(v TESSERA_SOURCE_DIR WORK_DIR MODE GENERATOR CXX)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run_consumer.cmake: -D${v}=... is required")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
set(consumer ${TESSERA_SOURCE_DIR}/tests/install/consumer)

if(MODE STREQUAL "find_package")
  # Install the build tree the suite runs in (what `cmake --install build` does for a user: the
  # headers, the package files and tessera::compiled's library, already built) into the prefix.
  if(NOT DEFINED TESSERA_BUILD_DIR)
    message(FATAL_ERROR "run_consumer.cmake: MODE=find_package needs -DTESSERA_BUILD_DIR=...")
  endif()
  run(${CMAKE_COMMAND} --install ${TESSERA_BUILD_DIR} --prefix ${prefix})
  if(NOT EXISTS ${prefix}/include/tessera/tessera.hpp)
    message(FATAL_ERROR "install did not place include/tessera/tessera.hpp under ${prefix}")
  endif()
  # The consumer is compiled with the suite's CMAKE_CXX_FLAGS (CXX_FLAGS), as the installed
  # library was: a sanitizer build's library needs its runtime.
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
      -DCMAKE_CXX_COMPILER=${CXX} "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" -DCMAKE_PREFIX_PATH=${prefix}
      -DCONSUMER_MODE=find_package)
elseif(MODE STREQUAL "add_subdirectory")
  # tessera as a subproject, with or without its compiled library as the suite's build.
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
      -DCMAKE_CXX_COMPILER=${CXX} "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" -DCONSUMER_MODE=add_subdirectory
      -DTESSERA_SOURCE_DIR=${TESSERA_SOURCE_DIR} -DTESSERA_BUILD_COMPILED=${EXPECT_COMPILED})
else()
  message(FATAL_ERROR "MODE must be find_package or add_subdirectory, got '${MODE}'")
endif()
run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build --parallel 3)
run(${WORK_DIR}/consumer-build/consumer)
# The compiled mode, where this tessera has it (EXPECT_COMPILED: the suite's build has it).
if(NOT EXPECT_COMPILED)
  return()
endif()
if(NOT EXISTS ${WORK_DIR}/consumer-build/consumer_compiled)
  message(FATAL_ERROR "tessera::compiled was not found by the consumer")
endif()
run(${WORK_DIR}/consumer-build/consumer_compiled)
# Every level this CPU has, forced (a level it lacks is an error, which the consumer reports).
foreach(level default avx2 avx512)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env TESSERA_CPU_CAPABILITY=${level}
                          ${WORK_DIR}/consumer-build/consumer_compiled
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0)
    message(STATUS "${out}")
  elseif(NOT err MATCHES "which this CPU \\(or its operating system\\) lacks")
    message(FATAL_ERROR "consumer_compiled with TESSERA_CPU_CAPABILITY=${level} failed (${rc}):\n${out}\n${err}")
  endif()
endforeach()

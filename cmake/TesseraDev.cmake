# Settings shared by tessera's own tests, benchmarks and examples (never by consumers).

# tessera_dev: what every in-tree program links: the library, warnings, and -march=native when on.
add_library(tessera_dev INTERFACE)
target_link_libraries(tessera_dev INTERFACE tessera::tessera)
if(TESSERA_NATIVE)
  target_link_libraries(tessera_dev INTERFACE tessera::native)
endif()
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  # GCC 12 reports false maybe-uninitialized warnings inside its own AVX-512 intrinsics headers,
  # and missing-field-initializers for designated initialisers that leave members defaulted.
  target_compile_options(tessera_dev INTERFACE -Wall -Wextra -Wpedantic -Wno-maybe-uninitialized -Wno-missing-field-initializers)
endif()

if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "Build type" FORCE)
endif()

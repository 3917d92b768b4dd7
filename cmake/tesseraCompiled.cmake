# tessera::compiled: the compiled mode (include/tessera/kernels/dispatch.hpp). A static library
# holding the dispatched kernels and the losses' computations (contrastive/dispatch.hpp) once per
# instruction-set level, and the dispatcher that picks one at run time. Linking it defines
# TESSERA_COMPILED for the consumer, whose translation units then call into the library instead
# of compiling the kernels.
#
# Levels: on x86-64 ELF systems with GCC or Clang and binutils (objcopy, nm): default (the x86-64
# baseline, SSE2), avx2 (AVX2 + FMA) and avx512 (AVX-512 F, CD, BW, DQ, VL); elsewhere one level,
# default, with the compiler's default flags. The level objects are built without link-time
# optimisation (their symbols are renamed in the machine code), and at -O2 where no build type
# gives an optimisation level.
#
# src/isa_kernels.cpp and src/isa_losses.cpp are compiled once per level. The inline and
# template functions they instantiate (tessera's, Eigen's, the standard library's) would
# otherwise be merged across levels and with the consumer's by the linker, which keeps one copy
# of each: an AVX-512 copy could then run on a CPU without AVX-512, or a baseline copy inside the
# AVX-512 kernels. So each level's object has every symbol it defines renamed with a suffix of
# its level (cmake/tesseraIsolateObject.cmake), except its entry point, function-local static
# data (the thread count, Eigen's settings, scratch buffers: state the levels and the consumer
# share) and type_info.
set(TESSERA_COMPILED_LEVELS default)
set(tessera_flags_default "")
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$" AND CMAKE_EXECUTABLE_FORMAT STREQUAL "ELF"
   AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang" AND NOT CMAKE_CXX_COMPILER_FRONTEND_VARIANT STREQUAL "MSVC"
   AND CMAKE_OBJCOPY AND CMAKE_NM)
  set(TESSERA_COMPILED_LEVELS default avx2 avx512)
  set(tessera_flags_default -march=x86-64 -mtune=generic)
  set(tessera_flags_avx2 -march=x86-64 -mtune=generic -mavx2 -mfma)
  set(tessera_flags_avx512 -march=x86-64 -mtune=generic -mavx2 -mfma -mavx512f -mavx512cd
                           -mavx512bw -mavx512dq -mavx512vl)
  set(tessera_isolate ON)
else()
  set(tessera_isolate OFF)
endif()
message(STATUS "tessera: tessera::compiled holds the levels ${TESSERA_COMPILED_LEVELS}")

# Eigen's heap alignment follows the flags (16 bytes, with plain malloc, at the baseline; 32 or 64
# above it, through an offset block), so code built at different levels allocates and frees Eigen
# objects differently. The library's objects and every consumer of tessera::compiled are given the
# same limits, 64 bytes, so that an Eigen object or an inline Eigen function shared between the
# library (the modules, built at the baseline) and a consumer built with -march=native
# is freed as it was allocated (core/eigen.hpp checks the consumer's).
set(tessera_eigen_alignment EIGEN_MAX_ALIGN_BYTES=64 EIGEN_MAX_STATIC_ALIGN_BYTES=64)

set(tessera_level_objects "")
set(tessera_level_definitions "")
# Two objects per level: the kernels (src/isa_kernels.cpp, header-only code) and the losses'
# computations (src/isa_losses.cpp, compiled-mode code whose products call the kernels).
foreach(level ${TESSERA_COMPILED_LEVELS})
  foreach(part kernels losses)
    set(target tessera_isa_${part}_${level})
    add_library(${target} OBJECT ${CMAKE_CURRENT_SOURCE_DIR}/src/isa_${part}.cpp)
    target_link_libraries(${target} PRIVATE tessera::tessera)
    target_compile_definitions(${target} PRIVATE TESSERA_ISA_LEVEL=${level} ${tessera_eigen_alignment})
    if(part STREQUAL "losses")
      target_compile_definitions(${target} PRIVATE TESSERA_COMPILED)
    endif()
    target_compile_options(${target} PRIVATE ${tessera_flags_${level}})
    set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON
                                               INTERPROCEDURAL_OPTIMIZATION OFF)
    target_compile_options(${target} PRIVATE $<$<CONFIG:>:-O2>)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_compile_options(${target} PRIVATE -Wno-ignored-attributes)
    endif()
    if(tessera_isolate)
      target_compile_options(${target} PRIVATE -fno-lto)
      set(out ${CMAKE_CURRENT_BINARY_DIR}/tessera_isolated/$<CONFIG>/${target}${CMAKE_CXX_OUTPUT_EXTENSION})
      add_custom_command(OUTPUT ${out}
        COMMAND ${CMAKE_COMMAND} -DNM=${CMAKE_NM} -DOBJCOPY=${CMAKE_OBJCOPY}
                -DINPUT=$<TARGET_OBJECTS:${target}> -DOUTPUT=${out}
                -DKEEP=tessera_isa_${part}_${level} -DSUFFIX=.tessera_${level}
                -P ${CMAKE_CURRENT_SOURCE_DIR}/cmake/tesseraIsolateObject.cmake
        DEPENDS ${target} $<TARGET_OBJECTS:${target}>
                ${CMAKE_CURRENT_SOURCE_DIR}/cmake/tesseraIsolateObject.cmake
        COMMENT "tessera: isolating the symbols of the ${level} ${part}"
        VERBATIM)
      list(APPEND tessera_level_objects ${out})
    else()
      list(APPEND tessera_level_objects $<TARGET_OBJECTS:${target}>)
    endif()
  endforeach()
  if(NOT level STREQUAL "default")
    string(TOUPPER ${level} upper)
    list(APPEND tessera_level_definitions TESSERA_HAVE_${upper})
  endif()
endforeach()

# The modules and optimizers of nn/, fusion/, contrastive/, models/ and optim/ instantiated for
# float and double (src/instantiate_*.cpp; TESSERA_INSTANTIATE in core/config.hpp), compiled
# once, at the baseline level's flags: their arithmetic runs in the dispatched kernels. models/
# reads safetensors, which needs nlohmann_json: without it the library holds no models, and
# tells its consumers so (TESSERA_COMPILED_WITHOUT_MODELS).
set(tessera_instantiations nn fusion contrastive optim)
if(TESSERA_WITH_NLOHMANN_JSON)
  list(APPEND tessera_instantiations models)
endif()
list(TRANSFORM tessera_instantiations PREPEND ${CMAKE_CURRENT_SOURCE_DIR}/src/instantiate_)
list(TRANSFORM tessera_instantiations APPEND .cpp)
# With nlohmann_json, the functions that read or write JSON (TESSERA_JSON_FUNCTION in
# core/config.hpp), so that its consumers compile neither nlohmann-json's header nor its parsers.
if(TESSERA_WITH_NLOHMANN_JSON)
  list(APPEND tessera_instantiations ${CMAKE_CURRENT_SOURCE_DIR}/src/json_functions.cpp)
endif()
# Where there are level objects, the library's own sources are an object library of their own, so
# that a build compiles them beside the level objects instead of after them (a target's own
# sources wait for the targets it depends on). Elsewhere (other architectures, Apple, whose Xcode
# generator does not build a library made of object files alone) they are the library's sources.
set(tessera_own_sources ${CMAKE_CURRENT_SOURCE_DIR}/src/dispatch.cpp
                        ${CMAKE_CURRENT_SOURCE_DIR}/src/dispatch_losses.cpp ${tessera_instantiations})
if(tessera_isolate)
  add_library(tessera_compiled_objects OBJECT ${tessera_own_sources})
  add_library(tessera_compiled STATIC $<TARGET_OBJECTS:tessera_compiled_objects>
                                      ${tessera_level_objects})
  set(tessera_own_target tessera_compiled_objects)
else()
  add_library(tessera_compiled STATIC ${tessera_own_sources} ${tessera_level_objects})
  set(tessera_own_target tessera_compiled)
endif()
set_target_properties(${tessera_own_target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_link_libraries(${tessera_own_target} PRIVATE tessera::tessera)
target_compile_definitions(${tessera_own_target} PRIVATE TESSERA_COMPILED
                           ${tessera_level_definitions} ${tessera_eigen_alignment})
if(NOT TESSERA_WITH_NLOHMANN_JSON)
  target_compile_definitions(${tessera_own_target} PRIVATE TESSERA_COMPILED_WITHOUT_MODELS)
endif()
target_compile_options(${tessera_own_target} PRIVATE ${tessera_flags_default}
                       $<$<CONFIG:>:-O2>)

add_library(tessera::compiled ALIAS tessera_compiled)
if(tessera_isolate)
  set_source_files_properties(${tessera_level_objects} PROPERTIES EXTERNAL_OBJECT TRUE GENERATED TRUE)
endif()
set_target_properties(tessera_compiled PROPERTIES EXPORT_NAME compiled OUTPUT_NAME tessera_compiled
                                                  POSITION_INDEPENDENT_CODE ON)
target_link_libraries(tessera_compiled PUBLIC tessera::tessera)
target_compile_definitions(tessera_compiled PUBLIC TESSERA_COMPILED ${tessera_eigen_alignment})
if(NOT TESSERA_WITH_NLOHMANN_JSON)
  target_compile_definitions(tessera_compiled PUBLIC TESSERA_COMPILED_WITHOUT_MODELS)
endif()

# The input layers' link targets: what tessera/text, tessera/image and tessera/audio include, found
# on the system (Debian's packages, see cmake/install_deps.sh). Each is optional: when a library is
# missing its target is not defined, CMake says so once, and the tests, examples and benchmarks
# that need it are skipped. The same file runs in tessera's own build and, installed beside
# tesseraConfig.cmake, in a consumer's find_package(tessera), so both see the same targets:
#
#   tessera::text           CLIP's BPE tokenizer       zlib, PCRE2 (8-bit), utf8proc, nlohmann-json
#   tessera::sentencepiece  SentencePiece tokenizer    sentencepiece (+ its trainer), utf8proc
#   tessera::image          decoding and writing       stb (stb_image, stb_image_write)
#   tessera::audio          sound files, resampling    libsndfile, libsamplerate
#
# Each target is INTERFACE and links tessera::tessera, so `target_link_libraries(app PRIVATE
# tessera::text)` is all a program needs. Variables TESSERA_WITH_TEXT, _SENTENCEPIECE, _IMAGE and
# _AUDIO say which exist.
include_guard(GLOBAL)

# In tessera's own build the targets must be seen from every directory (add_subdirectory
# consumers included); in a consumer's find_package they live in the caller's scope.
if(TARGET tessera)
  set(_tessera_scope GLOBAL)
else()
  set(_tessera_scope "")
endif()

find_package(PkgConfig QUIET)
find_package(ZLIB QUIET)
if(NOT TARGET nlohmann_json::nlohmann_json)
  find_package(nlohmann_json 3.2 QUIET)
endif()

function(_tessera_pkg var module)
  set(${var}_FOUND OFF PARENT_SCOPE)
  if(PkgConfig_FOUND)
    pkg_check_modules(${var} QUIET ${_tessera_scope} IMPORTED_TARGET ${module})
    if(${var}_FOUND)
      set(${var}_FOUND ON PARENT_SCOPE)
    endif()
  endif()
endfunction()

_tessera_pkg(TESSERA_PCRE2 libpcre2-8)
_tessera_pkg(TESSERA_UTF8PROC libutf8proc)
_tessera_pkg(TESSERA_STB stb)
_tessera_pkg(TESSERA_SENTENCEPIECE sentencepiece)
_tessera_pkg(TESSERA_SNDFILE sndfile)
_tessera_pkg(TESSERA_SAMPLERATE samplerate)

# _tessera_input(<name> <found?> <what is missing> <libraries...>)
function(_tessera_input name found missing)
  string(TOUPPER ${name} upper)
  if(found)
    if(NOT TARGET tessera::${name})
      add_library(tessera::${name} INTERFACE IMPORTED ${_tessera_scope})
      target_link_libraries(tessera::${name} INTERFACE tessera::tessera ${ARGN})
    endif()
    set(TESSERA_WITH_${upper} ON PARENT_SCOPE)
  else()
    set(TESSERA_WITH_${upper} OFF PARENT_SCOPE)
    message(STATUS "tessera: tessera::${name} not available (missing:${missing}); "
                   "cmake/install_deps.sh installs it")
  endif()
endfunction()

set(_missing "")
foreach(pair "ZLIB_FOUND;zlib" "TESSERA_PCRE2_FOUND;libpcre2-8" "TESSERA_UTF8PROC_FOUND;libutf8proc"
             "nlohmann_json_FOUND;nlohmann-json")
  list(GET pair 0 v)
  list(GET pair 1 what)
  if(NOT ${v} AND NOT (what STREQUAL "nlohmann-json" AND TARGET nlohmann_json::nlohmann_json))
    string(APPEND _missing " ${what}")
  endif()
endforeach()
if(_missing STREQUAL "")
  _tessera_input(text ON "" ZLIB::ZLIB PkgConfig::TESSERA_PCRE2 PkgConfig::TESSERA_UTF8PROC
                 nlohmann_json::nlohmann_json)
else()
  _tessera_input(text OFF "${_missing}")
endif()

# SentencePiece's SigLIP clean-up shares CLIP's Unicode steps (utf8proc).
if(TESSERA_SENTENCEPIECE_FOUND AND TESSERA_UTF8PROC_FOUND)
  _tessera_input(sentencepiece ON "" PkgConfig::TESSERA_SENTENCEPIECE PkgConfig::TESSERA_UTF8PROC)
else()
  set(_missing "")
  if(NOT TESSERA_SENTENCEPIECE_FOUND)
    string(APPEND _missing " sentencepiece")
  endif()
  if(NOT TESSERA_UTF8PROC_FOUND)
    string(APPEND _missing " libutf8proc")
  endif()
  _tessera_input(sentencepiece OFF "${_missing}")
endif()

if(TESSERA_STB_FOUND)
  _tessera_input(image ON "" PkgConfig::TESSERA_STB)
else()
  _tessera_input(image OFF " stb")
endif()

set(_missing "")
if(NOT TESSERA_SNDFILE_FOUND)
  string(APPEND _missing " sndfile")
endif()
if(NOT TESSERA_SAMPLERATE_FOUND)
  string(APPEND _missing " samplerate")
endif()
if(_missing STREQUAL "")
  _tessera_input(audio ON "" PkgConfig::TESSERA_SNDFILE PkgConfig::TESSERA_SAMPLERATE)
else()
  _tessera_input(audio OFF "${_missing}")
endif()
unset(_missing)

# tessera::mpi: tessera/distributed over MPI (Debian: libopenmpi-dev, openmpi-bin). Linking it
# defines TESSERA_WITH_MPI; without it the distributed headers build for a single process (rank 0
# of 1), so code written for several ranks still runs. TESSERA_WITH_MPI says whether it exists.
if(NOT TARGET tessera::mpi)
  # The C API through the C++ compiler (a C++-only project has no C compiler to probe with);
  # MPI's deprecated C++ bindings left out.
  set(MPI_CXX_SKIP_MPICXX ON)
  find_package(MPI QUIET COMPONENTS CXX)
endif()
if(TARGET tessera::mpi OR MPI_CXX_FOUND)
  if(NOT TARGET tessera::mpi)
    add_library(tessera::mpi INTERFACE IMPORTED ${_tessera_scope})
    target_link_libraries(tessera::mpi INTERFACE tessera::tessera MPI::MPI_CXX)
    target_compile_definitions(tessera::mpi INTERFACE TESSERA_WITH_MPI)
  endif()
  set(TESSERA_WITH_MPI ON)
else()
  set(TESSERA_WITH_MPI OFF)
  message(STATUS "tessera: tessera::mpi not available (missing: an MPI library, e.g. "
                 "libopenmpi-dev); tessera/distributed runs as a single process")
endif()

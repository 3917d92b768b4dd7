# cmake -DNM=... -DOBJCOPY=... -DINPUT=<object> -DOUTPUT=<object> -DKEEP=<symbol> -DSUFFIX=<suffix>
#       -P tesseraIsolateObject.cmake
# Copies INPUT to OUTPUT with every symbol INPUT defines renamed to <name><SUFFIX> (references
# inside the object follow), except KEEP, function-local static data (_ZZ..., guards _ZGVZ...;
# not code) and type_info (_ZTI..., _ZTS...), which stay shared with the rest of the program. See
# cmake/tesseraCompiled.cmake for why.
foreach(v NM OBJCOPY INPUT OUTPUT KEEP SUFFIX)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "tesseraIsolateObject.cmake: -D${v}=... is required")
  endif()
endforeach()
execute_process(COMMAND ${NM} --defined-only --format=posix ${INPUT}
                RESULT_VARIABLE rc OUTPUT_VARIABLE listing ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} failed on ${INPUT}: ${err}")
endif()
# objcopy renames the symbols of machine code; the GIMPLE or bitcode of an LTO object would be
# linked under the old names (and merged across levels), so LTO objects are refused.
if(listing MATCHES "(^|\n)__gnu_lto_|(^|\n)__LLVM_")
  message(FATAL_ERROR "${INPUT} holds link-time-optimisation code, which cannot be isolated; build "
                      "the tessera_isa_* objects without -flto")
endif()
string(REPLACE "\n" ";" lines "${listing}")
# The map is written a line at a time: appending to one CMake string copies it each time, which
# took minutes for the tens of thousands of symbols of a debug (sanitizer) build.
get_filename_component(dir ${OUTPUT} DIRECTORY)
file(MAKE_DIRECTORY ${dir})
file(WRITE ${OUTPUT}.map "")
set(found_keep OFF)
foreach(line ${lines})
  # posix format: name type value [size]
  if(NOT line MATCHES "^([^ ]+) ([A-Za-z]) ")
    continue()
  endif()
  set(name ${CMAKE_MATCH_1})
  set(type ${CMAKE_MATCH_2})
  # Function-local statics and their guards are data (types B D G R S V u); what else is local to
  # a function (a lambda's call operator _ZZ...clE..., a local class's destructor) is code, or
  # the COMDAT signature of code, and is renamed like all code. type_info objects and their names
  # (_ZTI, _ZTS) are the same at every level and stay shared too: a C++ runtime that compares
  # type_info by address (libc++) would otherwise not match a tessera::ValueError thrown by the
  # kernels to the consumer's catch. (Vtables point to code and are renamed.)
  if(name MATCHES "^(_ZZ|_ZGVZ|_ZTI|_ZTS)" AND type MATCHES "^[BDGRSVu]$")
    set(shared ON)
  else()
    set(shared OFF)
  endif()
  # Local symbols stay as they are, but for the signatures of COMDAT groups (type n, e.g. the
  # C5/D5 groups of constructors and destructors): the linker keeps one group per signature, so
  # a signature shared with another level would drop this level's copy.
  # (Type u, lowercase too, is a unique global, e.g. a class template's static data member.)
  if(type MATCHES "^[a-z]$" AND NOT type MATCHES "^[nu]$")
    continue()
  endif()
  if(name STREQUAL KEEP)
    set(found_keep ON)
  elseif(NOT shared)
    file(APPEND ${OUTPUT}.map "${name} ${name}${SUFFIX}\n")
  endif()
endforeach()
if(NOT found_keep)
  message(FATAL_ERROR "${INPUT} does not define ${KEEP}")
endif()
execute_process(COMMAND ${OBJCOPY} --redefine-syms=${OUTPUT}.map ${INPUT} ${OUTPUT}
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${OBJCOPY} failed on ${INPUT}: ${err}")
endif()

# pop-local build hook for llama-cpp-python's own CMake build.
#
#   CMAKE_ARGS="-DCMAKE_PROJECT_llama_cpp_INCLUDE=/abs/path/native/pop.cmake <your args>" \
#       pip install --no-cache-dir --no-binary llama-cpp-python llama-cpp-python==0.3.36
#
# CMake runs this file right after llama-cpp-python's project(llama_cpp), before the vendored
# llama.cpp is added. It applies the anchored insertions (patch_upstream.py), then, once the
# directory is processed and the `llama` target exists, compiles our sources into libllama.
# native/build.py drives this for users and CI (download, hash check, wheel cache, checks).

set(POP_NATIVE_DIR "${CMAKE_CURRENT_LIST_DIR}")

# the multimodal library (mtmd, upstream's LLAVA_BUILD, on by default) is built too: `chat --mmproj`
# decodes images through it into the patched libllama; -DLLAVA_BUILD=OFF leaves it out (images then fail)

if (DEFINED Python_EXECUTABLE)
    set(POP_PYTHON "${Python_EXECUTABLE}")
elseif (DEFINED Python3_EXECUTABLE)
    set(POP_PYTHON "${Python3_EXECUTABLE}")
else()
    find_package(Python3 REQUIRED COMPONENTS Interpreter)
    set(POP_PYTHON "${Python3_EXECUTABLE}")
endif()

execute_process(
    COMMAND "${POP_PYTHON}" "${POP_NATIVE_DIR}/patch_upstream.py" "${CMAKE_CURRENT_SOURCE_DIR}"
    RESULT_VARIABLE POP_PATCH_RESULT
    OUTPUT_VARIABLE POP_PATCH_OUTPUT
    ERROR_VARIABLE  POP_PATCH_ERROR)
if (NOT POP_PATCH_RESULT EQUAL 0)
    message(FATAL_ERROR "${POP_PATCH_ERROR}")
endif()
message(STATUS "${POP_PATCH_OUTPUT}")

# Our sources are copied next to llama.cpp's own (only when changed), so every compile command is the
# same whichever checkout the hook comes from: ccache and incremental builds carry across checkouts.
set(POP_SRC_DIR "${CMAKE_CURRENT_SOURCE_DIR}/vendor/llama.cpp/src")
foreach(POP_FILE pop.h pop.cpp pop_api.h)
    configure_file("${POP_NATIVE_DIR}/${POP_FILE}" "${POP_SRC_DIR}/${POP_FILE}" COPYONLY)
endforeach()

function(pop_attach_to_llama)
    if (NOT TARGET llama)
        message(FATAL_ERROR "pop-local: no `llama` target after llama-cpp-python's CMakeLists (LLAMA_BUILD=OFF?)")
    endif()
    target_sources(llama PRIVATE "${POP_SRC_DIR}/pop.cpp")
    message(STATUS "pop-local: prefill-only pruning compiled into libllama")
endfunction()

cmake_language(DEFER CALL pop_attach_to_llama)

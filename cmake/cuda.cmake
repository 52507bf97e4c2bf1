# fusedopt._cuda: built when FUSEDOPT_CUDA is ON, or AUTO and a CUDA compiler is found.
#
# FUSEDOPT_CUDA_ARCHS: the CUDA architectures, in CMake's CUDA_ARCHITECTURES syntax
# ("90" = sm_90 machine code plus compute_90 PTX; "90-real" = machine code only). The
# default covers Turing to Hopper with machine code and newer GPUs through the PTX, which
# their driver compiles at first use. Set it with -DFUSEDOPT_CUDA_ARCHS=... or, for pip,
# the environment variable of the same name (CI builds one architecture to save time).
string(TOUPPER "${FUSEDOPT_CUDA}" _fusedopt_cuda_mode)
set(FUSEDOPT_CUDA_ENABLED OFF)
if(_fusedopt_cuda_mode STREQUAL "ON" OR _fusedopt_cuda_mode STREQUAL "AUTO")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(FUSEDOPT_CUDA_ENABLED ON)
  elseif(_fusedopt_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "FUSEDOPT_CUDA=ON but no CUDA compiler was found (set CUDACXX or put nvcc on PATH)")
  else()
    message(STATUS "fusedopt: no CUDA compiler found; building the CPU module only")
  endif()
elseif(NOT _fusedopt_cuda_mode STREQUAL "OFF")
  message(FATAL_ERROR "FUSEDOPT_CUDA must be AUTO, ON or OFF (got '${FUSEDOPT_CUDA}')")
endif()

if(FUSEDOPT_CUDA_ENABLED)
  set(_fusedopt_default_archs "75-real;80-real;86-real;89-real;90")
  if(DEFINED ENV{FUSEDOPT_CUDA_ARCHS} AND NOT "$ENV{FUSEDOPT_CUDA_ARCHS}" STREQUAL "")
    set(_fusedopt_default_archs "$ENV{FUSEDOPT_CUDA_ARCHS}")
  endif()
  set(FUSEDOPT_CUDA_ARCHS "${_fusedopt_default_archs}" CACHE STRING
      "CUDA architectures of fusedopt._cuda (CMake CUDA_ARCHITECTURES syntax)")
  # enable_language needs an architecture list before it test-compiles; ours is set per target.
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES "${FUSEDOPT_CUDA_ARCHS}")
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "fusedopt: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${FUSEDOPT_CUDA_ARCHS}")
endif()

if(FUSEDOPT_CUDA_ENABLED AND EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/CMakeLists.txt")
  add_subdirectory(csrc/cuda)
elseif(FUSEDOPT_CUDA_ENABLED)
  message(STATUS "fusedopt: CUDA compiler found, but the CUDA sources are not present yet")
endif()

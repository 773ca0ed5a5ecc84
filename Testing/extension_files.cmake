# `cmake -DLIGHTSEG_SOURCE_ROOT=<repo> -P Testing/extension_files.cmake`: prints the files the extension installs
# beside the module (LightSeg/LightSegLibFiles.cmake, the same file the extension build includes), one per line.
include(${LIGHTSEG_SOURCE_ROOT}/LightSeg/LightSegLibFiles.cmake)
foreach(_file IN LISTS LIGHTSEGLIB_PYTHON_SCRIPTS LIGHTSEGLIB_RESOURCES)
  message(STATUS "${_file}")
endforeach()

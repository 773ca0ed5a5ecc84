# What the Slicer extension ships of the library: the runtime, i.e. every module of LightSegLib outside its
# workshop (LightSegLib/lab: networks, training, compression, publishing, which need torch), the model registry with
# its weights and cards, and the samples the self-test and Sample Data use. The folder layout is the statement;
# this file only reads it. Paths are relative to LIGHTSEG_SOURCE_ROOT (the repository root).
# Testing/test_layout.py evaluates this file with `cmake -P` and runs every runtime command from what it lists.
file(GLOB_RECURSE LIGHTSEGLIB_PYTHON_SCRIPTS RELATIVE ${LIGHTSEG_SOURCE_ROOT} ${LIGHTSEG_SOURCE_ROOT}/LightSegLib/*.py)
list(FILTER LIGHTSEGLIB_PYTHON_SCRIPTS EXCLUDE REGEX "^LightSegLib/lab/")
list(SORT LIGHTSEGLIB_PYTHON_SCRIPTS)

# Registry, schema, ONNX weights and model cards (whatever is registered at build time; no torch checkpoints).
file(GLOB LIGHTSEGLIB_RESOURCES RELATIVE ${LIGHTSEG_SOURCE_ROOT}
  ${LIGHTSEG_SOURCE_ROOT}/Resources/Models/*.json
  ${LIGHTSEG_SOURCE_ROOT}/Resources/Models/models.json.sha256
  ${LIGHTSEG_SOURCE_ROOT}/Resources/Models/*.onnx
  ${LIGHTSEG_SOURCE_ROOT}/Resources/Models/*.md
  )
# The reference teacher (status "reference", 31 MB) is for measuring compression, not for clinicians: the module
# hides it, so the extension does not carry its weights.
list(FILTER LIGHTSEGLIB_RESOURCES EXCLUDE REGEX "-teacher\\.onnx$")
# The bundled samples with their references and licences: the self-test, Sample Data and `lightseg demo` use them.
file(GLOB _lightseg_samples RELATIVE ${LIGHTSEG_SOURCE_ROOT}
  ${LIGHTSEG_SOURCE_ROOT}/Resources/Samples/*.nii.gz
  ${LIGHTSEG_SOURCE_ROOT}/Resources/Samples/*.md
  ${LIGHTSEG_SOURCE_ROOT}/Resources/Samples/*.txt
  )
list(APPEND LIGHTSEGLIB_RESOURCES ${_lightseg_samples})

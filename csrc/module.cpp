// The Python extension module torch_patsparse._C: importing it runs the static TORCH_LIBRARY
// registrations; the ops themselves are reached through torch.ops.patsparse.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

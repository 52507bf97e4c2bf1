// Python's coefficient objects (fusedopt/rules/<rule>.py) as the step structs of
// common/steps.h, in both modules. The names come from steps.h's descriptions, and so do
// the names Python builds its objects with (step_fields()): one list a rule.
#pragma once

#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <algorithm>
#include <utility>
#include <vector>

#include "bindings/reader.h"
#include "common/steps.h"

namespace fusedopt {
namespace bindings {

namespace py = pybind11;

// Every rule's field names, in order: its numbers, then its flags.
#define FUSEDOPT_NAME_OF_NUMBER(name) #name,
#define FUSEDOPT_NAME_OF_FLAG(name, kind) #name,
#define FUSEDOPT_STEP_FIELDS(Step, COEFFS, FLAGS, ...)                                   \
  {                                                                                      \
    const char* fields[] = {COEFFS(FUSEDOPT_NAME_OF_NUMBER) FLAGS(FUSEDOPT_NAME_OF_FLAG)}; \
    const char* numbers[] = {COEFFS(FUSEDOPT_NAME_OF_NUMBER)};                           \
    py::tuple names(sizeof(fields) / sizeof(fields[0]));                                 \
    for (size_t i = 0; i < names.size(); ++i) names[i] = py::str(fields[i]);            \
    out[Step::kName] = names;                                                            \
    n_numbers[Step::kName] = sizeof(numbers) / sizeof(numbers[0]);                       \
  }
struct StepFields {
  py::dict out;        // rule -> its field names, in order
  py::dict n_numbers;  // rule -> how many of them are numbers (the rest are flags)
};
inline const StepFields& step_field_table() {
  static const StepFields* table = [] {  // built once; never freed (outlives the interpreter's end)
    auto* t = new StepFields();
    py::dict& out = t->out;
    py::dict& n_numbers = t->n_numbers;
    FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_STEP_FIELDS)
    FUSEDOPT_FOR_EACH_FACTORED_STEP(FUSEDOPT_STEP_FIELDS)
    return t;
  }();
  return *table;
}
inline const py::dict& step_fields() { return step_field_table().out; }
#undef FUSEDOPT_STEP_FIELDS

namespace detail {

// Reads the fields of a coefficient object in the order of its rule's description. A
// NamedTuple whose _fields are that order (checked once per type) is read by position;
// any other object by attribute name.
class FieldReader {
 public:
  FieldReader(py::handle obj, const char* rule) : obj_(obj), rule_(rule) {
    PyObject* type = reinterpret_cast<PyObject*>(Py_TYPE(obj.ptr()));
    // (type, rule) pairs whose _fields were the rule's (rule: a Step::kName, static). Few.
    static std::vector<std::pair<PyObject*, const char*>> checked;
    if (PyTuple_Check(obj.ptr())) {
      const std::pair<PyObject*, const char*> key{type, rule};
      if (std::find(checked.begin(), checked.end(), key) != checked.end()) {
        positional_ = true;
      } else if (py::hasattr(obj, "_fields") && py::object(obj.attr("_fields")).equal(py::object(step_fields()[rule]))) {
        checked.push_back(key);  // the type is kept alive here: its address stays its own
        Py_INCREF(type);
        positional_ = true;
      }
    }
  }
  PyObject* next(const char* name) {
    if (positional_) {
      if (index_ >= PyTuple_GET_SIZE(obj_.ptr())) throw std::invalid_argument(std::string(rule_) + ": too few fields");
      return PyTuple_GET_ITEM(obj_.ptr(), index_++);
    }
    held_ = py::reinterpret_borrow<py::object>(obj_).attr(name);
    return held_.ptr();
  }
  double number(const char* name) {
    const double v = PyFloat_AsDouble(next(name));
    if (v == -1.0 && PyErr_Occurred()) throw py::error_already_set();
    return v;
  }
  long long integer(const char* name) {
    PyObject* o = next(name);
    const long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    return v;
  }

 private:
  py::handle obj_;
  const char* rule_;
  bool positional_ = false;
  Py_ssize_t index_ = 0;
  py::object held_;
};

template <FlagKind kKind>
typename FlagType<kKind>::type read_flag(FieldReader& r, const char* name) {
  const long long v = r.integer(name);
  if (!flag_allows(kKind, v)) throw std::invalid_argument(std::string("bad value of coefficient flag ") + name);
  return static_cast<typename FlagType<kKind>::type>(v);
}

}  // namespace detail

template <class Step>
Step step_from_python(py::handle obj);

// The state layout a rule's calls are read with (bindings/reader.h): the factored rules'
// (FUSEDOPT_FOR_EACH_FACTORED_STEP) or the elementwise one.
inline StateLayout layout_of(const std::string& rule) {
#define FUSEDOPT_FACTORED_IF(Step, ...) \
  if (rule == Step::kName) return StateLayout::kFactored;
  FUSEDOPT_FOR_EACH_FACTORED_STEP(FUSEDOPT_FACTORED_IF)
#undef FUSEDOPT_FACTORED_IF
  return StateLayout::kSame;
}

#define FUSEDOPT_READ_NUMBER(name) s.c.name = r.number(#name);
#define FUSEDOPT_READ_FLAG(name, kind) s.name = detail::read_flag<FlagKind::kind>(r, #name);
#define FUSEDOPT_STEP_READER(Step, COEFFS, FLAGS, ...)     \
  template <>                                              \
  inline Step step_from_python<Step>(py::handle obj) {     \
    detail::FieldReader r(obj, Step::kName);               \
    Step s;                                                \
    COEFFS(FUSEDOPT_READ_NUMBER)                           \
    FLAGS(FUSEDOPT_READ_FLAG)                              \
    return s;                                              \
  }
FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_STEP_READER)
FUSEDOPT_FOR_EACH_FACTORED_STEP(FUSEDOPT_STEP_READER)
#undef FUSEDOPT_STEP_READER
#undef FUSEDOPT_READ_NUMBER
#undef FUSEDOPT_READ_FLAG

}  // namespace bindings
}  // namespace fusedopt

// The core's one error convention (docs/DESIGN.md "Errors"): a function that finds bad input throws
// std::invalid_argument whose message names the problem (throw_invalid); a function whose job is to
// answer a question (shape_ok, plan_supports, isa_supported, parse_isa, checked.h's *_ok) returns
// bool. Bindings catch once, at their boundary, and report in their runtime's form (torch:
// c10::Error via TORCH_CHECK; ExecuTorch: a log line and Error::InvalidArgument). Torch-free.
#pragma once

#include <stdexcept>
#include <string>

namespace patsparse {

[[noreturn]] inline void throw_invalid(const std::string& what) { throw std::invalid_argument(what); }

}  // namespace patsparse

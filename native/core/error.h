// Errors that cross into JS keep their kind so the binding can throw TypeError / RangeError / Error.
#pragma once
#include <stdexcept>
#include <string>

namespace dk {

enum class ErrorKind { Type, Range, Generic, OutOfMemory };

struct Error : std::runtime_error {
  ErrorKind kind;
  Error(ErrorKind k, const std::string& msg) : std::runtime_error(msg), kind(k) {}
};

[[noreturn]] inline void throw_type(const std::string& m) { throw Error(ErrorKind::Type, m); }
[[noreturn]] inline void throw_range(const std::string& m) { throw Error(ErrorKind::Range, m); }
[[noreturn]] inline void throw_error(const std::string& m) { throw Error(ErrorKind::Generic, m); }
[[noreturn]] inline void throw_oom(const std::string& m) { throw Error(ErrorKind::OutOfMemory, m); }

}  // namespace dk

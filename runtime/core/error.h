// Error types and checking macros shared by every Phoenix module.
// Two kinds of error (as in gloo): invariant violations are bugs (InternalError, from
// PHX_ENFORCE); bad input from the user or the environment is a UserError whose message is
// one line naming the problem and what to do. apps/ turns either into a non-zero exit.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace phx {

// A bug in Phoenix: an invariant did not hold.
class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// Bad input (flags, data files, checkpoints) or an environment problem the user can fix.
class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A failure reported by a library (CUDA, cuBLAS, HDF5, MPI ...), with its own message.
class LibraryError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throwInternal(const char* file, int line, const char* cond, const std::string& msg);
[[noreturn]] void throwLibrary(const char* lib, const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace phx

// PHX_ENFORCE(cond, parts...): throws phx::InternalError naming file:line and the condition.
#define PHX_ENFORCE(cond, ...)                                                               \
  do {                                                                                       \
    if (!(cond))                                                                             \
      ::phx::detail::throwInternal(__FILE__, __LINE__, #cond, ::phx::detail::concat(__VA_ARGS__)); \
  } while (0)

// PHX_USER_ERROR(parts...): throws phx::UserError with the concatenated message.
#define PHX_USER_ERROR(...) throw ::phx::UserError(::phx::detail::concat(__VA_ARGS__))

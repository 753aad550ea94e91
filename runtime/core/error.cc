#include "runtime/core/error.h"

#include <unistd.h>

#include "runtime/core/log.h"

namespace phx::detail {

namespace {
std::string where(const char* file, int line) {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return concat("[", host, " ", log::prefixTag(), "] ", file, ":", line);
}
}  // namespace

void throwInternal(const char* file, int line, const char* cond, const std::string& msg) {
  throw InternalError(concat("internal error at ", where(file, line), ": check '", cond,
                             "' failed", msg.empty() ? "" : ": ", msg));
}

void throwLibrary(const char* lib, const char* file, int line, const std::string& msg) {
  throw LibraryError(concat(lib, " error at ", where(file, line), ": ", msg));
}

}  // namespace phx::detail

#include "runtime/core/test_hooks.h"

#include <fcntl.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <string>

#include "runtime/core/log.h"

namespace phx::testhooks {

void killPoint(const char* phase) {
  const char* spec = std::getenv("PHX_TEST_KILL_PHASE");
  if (!spec) return;
  const char* colon = std::strchr(spec, ':');
  if (!colon || std::string(spec, colon) != phase) return;
  const int fd = ::open(colon + 1, O_CREAT | O_EXCL | O_WRONLY, 0644);
  if (fd < 0) return;  // an earlier process took this kill (or the marker cannot be made)
  ::close(fd);
  log::warn("test hook: SIGKILL in phase ", phase, " (pid ", getpid(), ")");
  ::raise(SIGKILL);
}

}  // namespace phx::testhooks

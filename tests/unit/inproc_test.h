// Shared by the unit tests that run ranks as threads over the in-process transport.
#pragma once

#include "runtime/transport/inproc/inproc_transport.h"

namespace phx::inproc_test {

using transport::Header;
using transport::InprocFabric;
using transport::InprocTransport;
using transport::MsgType;

// Deadline of any single wait in these tests (a hang fails instead of blocking ctest).
inline constexpr double kTimeout = 20.0;

}  // namespace phx::inproc_test

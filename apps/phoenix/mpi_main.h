// The frame of every command that runs as an MPI job: MPI_Init_thread, the body, and the
// mapping of errors to exit codes (UserError 2, PeerFailure 3, anything else 1), each printed
// with the rank. A rank that fails calls MPI_Abort so the whole job ends at once instead of
// leaving its peers waiting on it.
#pragma once

#include <functional>

namespace phx::apps {

int runUnderMpi(const std::function<void(int rank, int size)>& body);

}  // namespace phx::apps

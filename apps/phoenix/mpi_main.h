// The frame of every command that runs as an MPI job: MPI_Init_thread, the body, and the
// mapping of errors to exit codes (UserError 2, PeerFailure 3, anything else 1), each printed
// with the rank. A rank that fails calls MPI_Abort so the whole job ends at once instead of
// leaving its peers waiting on it.
#pragma once

#include <functional>

namespace phx::apps {

// `check` (optional) runs first on every rank, after MPI is up: if it throws a UserError on
// any rank (a bad flag: the same on every rank), the lowest such rank prints the line and every
// rank leaves with exit code 2 through MPI_Finalize, before any training.
int runUnderMpi(const std::function<void(int rank, int size)>& body,
                const std::function<void()>& check = {});

}  // namespace phx::apps

#pragma once
// Fault-injection points for the tests of "a kill in every phase of a recovery"
// (tests/fault/fault_test.sh section 7, docs/recovery.md "How it is tested").
//
// PHX_TEST_KILL_PHASE="PHASE:MARKER" (exported to every rank with mpirun -x): the first process
// of the job that reaches PHASE creates the file MARKER and SIGKILLs itself there, without
// announcing it (a crash, found by the heartbeats or the MPI); every later process that reaches
// PHASE finds the marker and goes on. Phases: restore (a spare or replacement that has read a
// snapshot, before serving it), view-send (a coordinator that has sent a new view to one rank
// only), promote (a replica promoted to head, before it serves), tail-join (a new chain tail
// receiving the head's whole state after a failure), backlog (a stateless server taking over that
// has taken one worker's buffered updates and not yet the others').
namespace phx::testhooks {
void killPoint(const char* phase);
}  // namespace phx::testhooks

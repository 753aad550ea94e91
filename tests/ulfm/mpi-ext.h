/* A stand-in for the <mpi-ext.h> of an MPI built with ULFM (Open MPI 5 --with-ft=ulfm): the
 * declarations and error classes only, so that CI compiles Phoenix's real-ULFM path
 * (runtime/transport/mpi/ulfm.cc) on a machine whose MPI has none. Never linked. */
#ifndef PHX_FAKE_ULFM_MPI_EXT_H
#define PHX_FAKE_ULFM_MPI_EXT_H
#include <mpi.h>
#define MPIX_ERR_PROC_FAILED 75
#define MPIX_ERR_PROC_FAILED_PENDING 76
#define MPIX_ERR_REVOKED 77
#ifdef __cplusplus
extern "C" {
#endif
int MPIX_Comm_revoke(MPI_Comm comm);
int MPIX_Comm_shrink(MPI_Comm comm, MPI_Comm* newcomm);
int MPIX_Comm_agree(MPI_Comm comm, int* flag);
int MPIX_Comm_failure_ack(MPI_Comm comm);
int MPIX_Comm_failure_get_acked(MPI_Comm comm, MPI_Group* failedgrp);
int MPIX_Comm_get_failed(MPI_Comm comm, MPI_Group* failedgroup);
#ifdef __cplusplus
}
#endif
#endif

// Open MPI's handles are macros over addresses of its globals, which Swift cannot import: these
// inline functions hand them over. Built only with the MPI trait (`swift build --traits MPI`).
#include <mpi.h>
static inline MPI_Comm tessera_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype tessera_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype tessera_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype tessera_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Op tessera_mpi_sum(void) { return MPI_SUM; }
static inline void *tessera_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Status *tessera_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Request tessera_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline int tessera_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }

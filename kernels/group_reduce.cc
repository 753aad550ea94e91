// Builds without NCCL: the entry points of kernels/group_reduce.h say what is missing.
// (With NCCL they live in kernels/cuda/nccl_group.cc.)
#include "kernels/group_reduce.h"

#include "phx_config.h"
#include "runtime/core/error.h"

#if !PHX_HAVE_NCCL
namespace phx::kernels {

namespace {
[[noreturn]] void noNccl() {
  PHX_USER_ERROR("this build of Phoenix has no NCCL (configure with PHX_WITH_NCCL=ON and NCCL "
                 "installed) -- use --group-reduce mpi");
}
}  // namespace

bool ncclBuilt() { return false; }
std::string gpuIdentity() { noNccl(); }
std::vector<uint8_t> NcclGroup::newId() { noNccl(); }
struct NcclGroup::Impl {};
NcclGroup::NcclGroup(const std::vector<uint8_t>&, int, int, double) { noNccl(); }
NcclGroup::~NcclGroup() = default;
void NcclGroup::reduceSum(float*, size_t) { noNccl(); }
void NcclGroup::broadcast(float*, size_t) { noNccl(); }

}  // namespace phx::kernels
#endif

#include "../core/error.h"
#include "kernels.h"
#include "stream.cuh"

namespace dk::cuda {

void copy_2d(int device, void* dst, int64_t dpitch, const void* src, int64_t spitch, int64_t width_bytes,
             int64_t height) {
  if (height <= 0 || width_bytes <= 0) return;
  check(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width_bytes, height, cudaMemcpyDeviceToDevice, stream(device)),
        "copy_2d");
}

}  // namespace dk::cuda

// For CUDA translation units: the device's stream and error checking.
#pragma once
#include <cuda_runtime.h>

namespace dk::cuda {

// The one stream all of a device's ops run on (in queue order).
cudaStream_t stream(int device);
// Throws dk::Error naming `what` unless e is cudaSuccess (OutOfMemory for allocation failures).
void check(cudaError_t e, const char* what);

}  // namespace dk::cuda

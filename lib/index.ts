// diffusekit: Stable-Diffusion-class image generation and training for Node.js.
export { Tensor, tidy, keep } from "./tensor";
export type { DType, DeviceName, TensorOptions, TensorData } from "./tensor";
export { devices, resolveDevice, memoryStats, resetPeakMemory, emptyCache, synchronize, buildInfo } from "./devices";
export type { DeviceInfo, CpuDeviceInfo, CudaDeviceInfo, MemoryStats, BuildInfo } from "./devices";
export * as ops from "./ops";
export { version } from "./version";

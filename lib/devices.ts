// What this process can compute on, and memory accounting per device.
import { native, type DeviceInfo, type MemoryStats, type BuildInfo } from "./native";

export type { DeviceInfo, CpuDeviceInfo, CudaDeviceInfo, MemoryStats, BuildInfo } from "./native";

/** The CPU (threads, SIMD level) and every CUDA device that answered. */
export function devices(): DeviceInfo[] {
  return native().devices();
}

/** "cuda" when a GPU answers, else "cpu" (for `device: "auto"`). */
export function resolveDevice(device: string = "auto"): string {
  if (device !== "auto") return device;
  return devices().some((d) => d.type === "cuda") ? "cuda:0" : "cpu";
}

/** Bytes held by live tensors, their peak, and bytes kept in the allocator's cache. */
export function memoryStats(device = "cpu"): MemoryStats {
  return native().memoryStats(device);
}
export function resetPeakMemory(device = "cpu"): void {
  native().resetPeakMemory(device);
}
/** Returns cached (free) blocks to the system / driver. */
export function emptyCache(device = "cpu"): void {
  native().emptyCache(device);
}
/** Resolves when all work queued on the device so far has finished. */
export function synchronize(device = "cpu"): Promise<void> {
  return native().synchronize(device);
}
export function buildInfo(): BuildInfo {
  return native().buildInfo();
}

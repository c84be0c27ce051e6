// The CPU side of a parity check is the reference, so it takes the exact paths: the CPU's
// Winograd 3x3 convolution trades ~1e-3 relative error for speed, which a float32 comparison
// would otherwise blame on the device.
import { native } from "../native";

export async function withExactCpuReference<T>(run: () => Promise<T>): Promise<T> {
  const previous = native().setConv2dAlgo("direct");
  try {
    return await run();
  } finally {
    native().setConv2dAlgo(previous);
  }
}

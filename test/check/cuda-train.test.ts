// The GPU training check (lib/check/cuda-train.ts, device-check part "train") must not rot where
// there is no GPU: run with the CPU standing in for the GPU, every row passes (VAE, U-Net, bf16
// mixed precision, LoRA + LoCon with samples drawn mid-run, textual inversion; GPU-vs-CPU losses
// are then trivially equal, the point is that every path of the script runs).
import { runTrainCheck } from "../../lib/check/cuda-train";

test("cuda-train's rows all pass with the CPU as the device", async () => {
  const lines: string[] = [];
  const rows = await runTrainCheck("cpu", 6, (l) => lines.push(l));
  expect(rows.filter((r) => !r.ok)).toEqual([]);
  expect(rows.map((r) => r.name)).toEqual(expect.arrayContaining([
    "train lora samples drawn on the device", "train textual inversion step 1 loss, GPU vs CPU", "train bf16 step 1 loss vs float32",
  ]));
}, 120_000);

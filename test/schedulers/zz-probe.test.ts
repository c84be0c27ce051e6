import { Tensor } from "../../lib/tensor";
import { add, mul } from "../../lib/ops";
import { TorchGenerator } from "../../lib/random/torch-generator";
import { Scheduler, schedulerFromConfig } from "../../lib/schedulers";
const SD15 = { beta_start: 0.00085, beta_end: 0.012, beta_schedule: "scaled_linear", num_train_timesteps: 1000, set_alpha_to_one: false, skip_prk_steps: true, steps_offset: 1 };
async function run(s: Scheduler, n: number) {
  s.setTimesteps(n);
  const shape=[1,4,8,8];
  let x = mul(Tensor.fromArray(new TorchGenerator(7).randn(shape), shape), s.initNoiseSigma);
  for (const t of s.timesteps) { const xin = s.scaleModelInput(x, t); const m = add(mul(xin, 0.3), Math.fround(0.05*Math.cos(t/100))); const p = s.step(m, t, x); x = p; }
  return x.toFloat32Array();
}
function rd(a: Float32Array, b: Float32Array) { let n=0,d=0; for (let i=0;i<a.length;i++){n=Math.max(n,Math.abs(a[i]-b[i]));d=Math.max(d,Math.abs(b[i]));} return n/d; }
test("probe", async () => {
  const ref = await run(schedulerFromConfig("DPMSolverMultistepScheduler", SD15), 500);
  const list: [string, Record<string, unknown>][] = [
    ["DPMSolverMultistepScheduler", {}], ["DPMSolverMultistepScheduler", {solver_type:"heun"}], ["DPMSolverMultistepScheduler", {solver_order:1}],
    ["UniPCMultistepScheduler", {}], ["UniPCMultistepScheduler", {solver_order:3}], ["UniPCMultistepScheduler", {solver_type:"bh1"}], ["UniPCMultistepScheduler", {solver_order:1}],
    ["PNDMScheduler", {}], ["PNDMScheduler", {skip_prk_steps:false}], ["HeunDiscreteScheduler", {}], ["LMSDiscreteScheduler", {}], ["EulerDiscreteScheduler", {}], ["DDIMScheduler", {}],
  ];
  for (const n of [10, 30]) for (const [c, o] of list) {
    const a = await run(schedulerFromConfig(c as any, {...SD15, ...o}), n);
    console.log(n, c, JSON.stringify(o), rd(a, ref).toExponential(2));
  }
});

/** `diffusekit info`: version, devices, build flags, and where the built-in model lives. */
import { buildInfo, devices } from "../devices";
import { version } from "../version";
import { BUILTIN_MODEL_DIR, builtinModelPath } from "../generate";

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

export function infoCommand(opts: { json?: boolean }): void {
  const build = buildInfo();
  const devs = devices();
  const builtin = builtinModelPath();
  if (opts.json) {
    const out = {
      version, node: process.version, platform: `${process.platform}-${process.arch}`,
      build, devices: devs, builtinModel: builtin, builtinModelDir: BUILTIN_MODEL_DIR,
    };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return;
  }
  const lines = [
    `diffusekit ${version} (node ${process.version}, ${process.platform}-${process.arch})`,
    `build: cuda backend ${build.cuda ? "compiled" : "not compiled"}, ${build.x86 ? "x86-64 SIMD kernels" : "generic kernels"}, compiler ${build.compiler}`,
  ];
  for (const d of devs) {
    if (d.type === "cpu") lines.push(`device cpu: ${d.isa}, ${d.threads} threads`);
    else lines.push(`device cuda:${d.index}: ${d.name}, ${gib(d.memoryBytes)}, capability ${d.capability}, ${d.multiprocessors} SMs`);
  }
  if (build.cuda && !devs.some((d) => d.type === "cuda")) lines.push("device cuda: none answered (no GPU or no driver); running on the CPU");
  lines.push(builtin ? `built-in model: ${builtin}` : `built-in model: none installed (expected at ${BUILTIN_MODEL_DIR}); pass --model PATH`);
  console.log(lines.join("\n"));
}

#!/usr/bin/env node
// The `diffusekit` command. Thin: parses arguments, calls the library, prints.
import { buildInfo, devices } from "../devices";
import { version } from "../version";

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

function info(): void {
  console.log(`diffusekit ${version} (node ${process.version}, ${process.platform}-${process.arch})`);
  const b = buildInfo();
  console.log(`build: cuda backend ${b.cuda ? "compiled" : "not compiled"}, compiler ${b.compiler}`);
  for (const d of devices()) {
    if (d.type === "cpu") console.log(`device cpu: ${d.threads} threads, ${d.isa}`);
    else console.log(`device cuda:${d.index}: ${d.name}, ${gib(d.memoryBytes)}, capability ${d.capability}, ${d.multiprocessors} SMs`);
  }
}

function usage(): void {
  console.log(`Usage: diffusekit <command>

Commands:
  info         version, devices and build flags
  --version    print the version`);
}

function main(argv: string[]): number {
  const [cmd] = argv;
  try {
    if (cmd === "--version" || cmd === "-V" || cmd === "version") console.log(version);
    else if (cmd === "info") info();
    else if (cmd === undefined || cmd === "--help" || cmd === "-h" || cmd === "help") usage();
    else {
      console.error(`diffusekit: unknown command "${cmd}" (try --help)`);
      return 2;
    }
    return 0;
  } catch (e) {
    console.error(`diffusekit: ${(e as Error).message}`);
    return 1;
  }
}

process.exitCode = main(process.argv.slice(2));

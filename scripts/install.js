#!/usr/bin/env node
// npm install hook: use a prebuild (or an existing build) when one loads, else build the addon
// with cmake-js. The CUDA backend is compiled when nvcc is found (DIFFUSEKIT_CUDA=OFF skips it).
"use strict";
const { spawnSync } = require("child_process");
const path = require("path");

const root = path.resolve(__dirname, "..");

function loads() {
  try {
    require("node-gyp-build")(root);
    return true;
  } catch {
    return false;
  }
}

if (process.env.DIFFUSEKIT_FORCE_BUILD !== "1" && loads()) {
  console.log("diffusekit: using the existing native addon");
  process.exit(0);
}

const cuda = process.env.DIFFUSEKIT_CUDA || "AUTO";
const args = ["compile", "--out", "build", `--CDDIFFUSEKIT_CUDA=${cuda}`];
console.log(`diffusekit: building the native addon (cmake-js ${args.join(" ")})`);
const cmakeJs = require.resolve("cmake-js/bin/cmake-js");
const r = spawnSync(process.execPath, [cmakeJs, ...args], { cwd: root, stdio: "inherit" });
if (r.status !== 0) {
  console.error(
    "diffusekit: building the native addon failed. It needs cmake >= 3.20 and a C++17 compiler (g++ or clang);\n" +
      "  the CUDA backend additionally needs nvcc (set DIFFUSEKIT_CUDA=OFF to build without it).",
  );
  process.exit(r.status || 1);
}

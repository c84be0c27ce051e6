#!/usr/bin/env node
// Writes a prebuildify-layout prebuild: prebuilds/<platform>-<arch>/diffusekit.node, taken from
// a fresh cmake-js build (node-gyp-build loads it before build/Release).
"use strict";
const { spawnSync } = require("child_process");
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const cuda = process.env.DIFFUSEKIT_CUDA || "AUTO";
const cmakeJs = require.resolve("cmake-js/bin/cmake-js");
const r = spawnSync(process.execPath, [cmakeJs, "compile", "--out", "build", `--CDDIFFUSEKIT_CUDA=${cuda}`], { cwd: root, stdio: "inherit" });
if (r.status !== 0) process.exit(r.status || 1);
const dir = path.join(root, "prebuilds", `${process.platform}-${process.arch}`);
fs.mkdirSync(dir, { recursive: true });
// node-gyp-build picks up "<name>.node" files carrying napi in their tags; keep prebuildify's naming.
const dest = path.join(dir, "diffusekit.napi.node");
fs.copyFileSync(path.join(root, "build", "Release", "diffusekit.node"), dest);
console.log(`diffusekit: wrote ${path.relative(root, dest)}`);

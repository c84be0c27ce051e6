#!/usr/bin/env node
// tsc writes dist/ files without the execute bit. npx only sets it when it first links the package
// into its cache, so after a rebuild (rm -rf dist) a cached link runs a non-executable file and sh
// says "Permission denied". Setting the mode at build time makes the bin runnable either way.
"use strict";
const fs = require("fs");
const path = require("path");

const root = path.join(__dirname, "..");
const { bin } = require(path.join(root, "package.json"));
for (const file of Object.values(typeof bin === "string" ? { bin } : bin || {})) {
  const full = path.join(root, file);
  fs.chmodSync(full, fs.statSync(full).mode | 0o111);
}

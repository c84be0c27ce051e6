// The package version, read from package.json once.
import * as fs from "fs";
import * as path from "path";

export const version: string = (
  JSON.parse(fs.readFileSync(path.resolve(__dirname, "..", "package.json"), "utf8")) as { version: string }
).version;

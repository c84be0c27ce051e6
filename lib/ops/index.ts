// Typed op functions over the native addon.
export * from "./elementwise";
export * from "./activation";
export * from "./shape";
export * from "./linalg";
export * from "./conv";
export * from "./norm";
export * from "./attention";
export * from "./misc";
export * from "./reduce";

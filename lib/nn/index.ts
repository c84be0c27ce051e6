export * from "./module";
export * from "./layers";

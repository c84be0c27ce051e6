// Config errors shared by the models built from diffusers config.json files.

/** A config value this implementation does not support (it would change the math); names the key. */
export class UnsupportedConfigError extends Error {
  constructor(readonly model: string, readonly key: string, value: unknown, supported: string) {
    super(`${model}: config "${key}" = ${JSON.stringify(value)} is not supported (supported: ${supported})`);
    this.name = "UnsupportedConfigError";
  }
}

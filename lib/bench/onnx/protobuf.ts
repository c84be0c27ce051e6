/**
 * The few protocol-buffer encodings an ONNX model file needs (varints, length-delimited fields,
 * fixed32 floats), written as nested byte arrays. Only for the benchmark that runs our models
 * through ONNX Runtime (see ort-compare.ts); nothing here is read back.
 */
export type Field = Uint8Array;

function varint(v: number | bigint): number[] {
  let x = BigInt.asUintN(64, BigInt(v));
  const out: number[] = [];
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x !== 0n) b |= 0x80;
    out.push(b);
  } while (x !== 0n);
  return out;
}

function key(field: number, wire: number): number[] {
  return varint((field << 3) | wire);
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/** An integer (int32/int64/enum/bool) field. */
export function int(field: number, v: number | bigint): Field {
  return Uint8Array.from([...key(field, 0), ...varint(v)]);
}

/** A length-delimited field: bytes, a string, or an embedded message (its encoded fields). */
export function bytes(field: number, data: Uint8Array | string): Field {
  const b = typeof data === "string" ? new TextEncoder().encode(data) : data;
  return concat([Uint8Array.from([...key(field, 2), ...varint(b.length)]), b]);
}

export function message(field: number, fields: readonly Field[]): Field {
  return bytes(field, concat(fields));
}

/** A float (fixed32) field. */
export function float(field: number, v: number): Field {
  return concat([Uint8Array.from(key(field, 5)), new Uint8Array(new Float32Array([v]).buffer)]);
}

/** A packed repeated int64 field. */
export function packedInts(field: number, vs: readonly number[]): Field {
  return bytes(field, Uint8Array.from(vs.flatMap((v) => varint(v))));
}

// Validate one .glb/.gltf file with the Khronos glTF Validator and print its JSON report.
//
//   node tests/gltf_validate.mjs FILE        (after `npm ci` at the repository root)
//
// Exit 0 with the report on stdout (the caller reads issues.numErrors); exit 2 with one line on
// stderr if the validator package is missing, the file cannot be read, or the validator rejects
// its arguments (e.g. a file that is neither glTF nor GLB).
import { readFile } from "node:fs/promises";
import path from "node:path";

const file = process.argv[2];
if (!file) {
  console.error("usage: node tests/gltf_validate.mjs FILE.glb");
  process.exit(2);
}
let validator;
try {
  validator = (await import("gltf-validator")).default;
} catch (e) {
  console.error("gltf-validator is not installed: run `npm ci` at the repository root");
  process.exit(2);
}
let bytes;
try {
  bytes = new Uint8Array(await readFile(file));
} catch (e) {
  console.error(`cannot read ${file}: ${e.message}`);
  process.exit(2);
}
try {
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 100,
    // A GLB is self-contained: any external reference is itself a problem.
    externalResourceFunction: (uri) => Promise.reject(`external resource ${uri} not allowed`),
  });
  console.log(JSON.stringify(report, null, 2));
} catch (e) {
  console.error(`the validator rejected ${file}: ${e}`);
  process.exit(2);
}

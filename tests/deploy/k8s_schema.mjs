// k8s_schema.mjs - validates Kubernetes objects against the API schemas of the npm package
// kubernetes-models (generated from the Kubernetes OpenAPI spec).  Called by check.py:
//
//   node k8s_schema.mjs NODE_MODULES_DIR  < [{"file": ..., "doc": {...}}, ...]
//
// Prints "valid FILE KIND/NAME" or "invalid FILE KIND/NAME: why" per object; exits 1 when
// one is invalid.  The package is ESM, which ignores NODE_PATH: modules are imported by
// absolute path.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const root = path.join(process.argv[2], "kubernetes-models");
const input = JSON.parse(fs.readFileSync(0, "utf8"));
let bad = 0;
for (const { file, doc } of input) {
  const what = `${file} ${doc.kind}/${doc.metadata.name}`;
  const mod = path.join(root, doc.apiVersion, `${doc.kind}.js`);
  if (!fs.existsSync(mod)) {
    bad++;
    console.log(`invalid ${what}: no schema for ${doc.apiVersion} ${doc.kind}`);
    continue;
  }
  const Model = (await import(pathToFileURL(mod).href))[doc.kind];
  try {
    new Model(doc).validate();
    console.log(`valid ${what} (${doc.apiVersion})`);
  } catch (e) {
    bad++;
    console.log(`invalid ${what}: ${e.message}`);
  }
}
process.exit(bad ? 1 : 0);

// Validates Prometheus Operator custom resources (read as a JSON array on stdin)
// against the schemas generated from the operator's published CRDs
// (npm @kubernetes-models/prometheus-operator). Prints one line per problem; exit 1 if any.
const path = require("path");
const models = require(path.join(process.cwd(), ".tools/node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1"));

let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  let failed = 0;
  for (const obj of JSON.parse(input)) {
    const Model = models[obj.kind];
    if (!Model) {
      console.log(`${obj.kind}: no schema`);
      failed++;
      continue;
    }
    try {
      new Model(obj).validate();
    } catch (e) {
      console.log(`${obj.kind}/${obj.metadata.name}: ${e.message}`);
      failed++;
    }
  }
  process.exit(failed ? 1 : 0);
});

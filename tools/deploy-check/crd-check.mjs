// Validates prometheus-operator objects against the schemas of their CRDs, as compiled into
// @kubernetes-models/prometheus-operator (generated from prometheus-operator's API types):
// types, required fields, enums and patterns (durations, ...). Unknown fields are not part of
// these validators; daemon/agent/tests/deploy.rs catches them with a TypeScript excess-property
// check of the same objects against the package's interfaces.
//
//   node crd-check.mjs OBJECTS.json     (a JSON array of Kubernetes objects)
//
// Prints one line per object; exits 1 if any is invalid or of a kind not known here.
import { readFileSync } from "node:fs";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = {
  "monitoring.coreos.com/v1 PrometheusRule": PrometheusRule,
  "monitoring.coreos.com/v1 ServiceMonitor": ServiceMonitor,
};

const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = 0;
for (const object of objects) {
  const kind = `${object.apiVersion} ${object.kind}`;
  const name = `${object.kind}/${object.metadata?.name}`;
  const Model = models[kind];
  if (!Model) {
    console.log(`ERROR ${name}: no CRD schema here for ${kind}`);
    failed++;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`OK ${name}`);
  } catch (error) {
    console.log(`ERROR ${name}: ${error.message}`);
    failed++;
  }
}
process.exit(failed === 0 ? 0 : 1);

// What deploying one template over another does to each resource, by the CDK's own template diff
// (@aws-cdk/cloudformation-diff, the library behind `cdk diff`).  Offline: it reads two files.
// Usage: node template_impacts.js OLD.template.json NEW.template.json
// Prints JSON: {"<logical ID>": {"type": "<resource type>", "impact": "WILL_REPLACE" | ...}} for
// every resource that changes.
'use strict';
const fs = require('fs');
const { fullDiff } = require('@aws-cdk/cloudformation-diff');

const [oldPath, newPath] = process.argv.slice(2);
if (!oldPath || !newPath) {
  process.stderr.write('usage: node template_impacts.js OLD.template.json NEW.template.json\n');
  process.exit(2);
}
const read = (path) => JSON.parse(fs.readFileSync(path, 'utf8'));
const diff = fullDiff(read(oldPath), read(newPath));
const impacts = {};
diff.resources.forEachDifference((logicalId, change) => {
  impacts[logicalId] = { type: change.newResourceType || change.oldResourceType, impact: change.changeImpact };
});
process.stdout.write(JSON.stringify(impacts, null, 1) + '\n');

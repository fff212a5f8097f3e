#!/usr/bin/env python3
"""Validates custom resources offline against the openAPIV3Schema of their CRDs (make check-chart).

    hack/validate-crs.py CRD_DIR FILE...

Every document in FILE... whose group has a CRD in CRD_DIR is checked against that CRD's schema
for its version, strictly: a field the schema does not declare is an error (as the API server's
`--validate=strict` would say), unless the schema preserves unknown fields there. Documents of
other groups are skipped. Fails when a document of a known group has no schema (wrong kind or
version) or when nothing was checked at all. Needs PyYAML and jsonschema (kubernetes-validate's
venv has both).
"""
import sys
from pathlib import Path

import jsonschema
import yaml


def strict(schema):
    """The schema as JSON Schema, with additionalProperties false where Kubernetes prunes."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def main(crd_dir, files):
    schemas = {}
    groups = set()
    for path in sorted(Path(crd_dir).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            groups.add(spec["group"])
            for version in spec["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                # metadata is checked by the API server's own rules, not by the CRD.
                schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = schema
    if not schemas:
        sys.exit(f"validate-crs: no CustomResourceDefinition in {crd_dir}")
    checked = failed = 0
    for file in files:
        for doc in yaml.safe_load_all(Path(file).read_text()):
            if not doc:
                continue
            api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            if api_version.split("/")[0] not in groups:
                continue
            name = f"{file}: {kind} {doc.get('metadata', {}).get('name')}"
            schema = schemas.get((api_version, kind))
            if schema is None:
                print(f"{name}: no CRD in {crd_dir} serves {kind} in {api_version}", file=sys.stderr)
                failed += 1
                continue
            errors = sorted(
                jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path)
            )
            for error in errors:
                path = ".".join(str(p) for p in error.path) or "(root)"
                print(f"{name}: {path}: {error.message}", file=sys.stderr)
            failed += bool(errors)
            checked += 1
    if failed:
        sys.exit(f"validate-crs: {failed} of the custom resources are invalid")
    if checked == 0:
        sys.exit("validate-crs: no custom resource of these CRDs' groups was found to check")
    print(f"validate-crs: {checked} custom resources valid against {crd_dir}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])

"""`make package`: the CloudFormation (SAM) template for a stage, one function per route, linted.

1. `chalice package` with infra/merge-template.json: Chalice cannot declare the SQS queue, its
   DLQ, partial batch responses (aws/chalice#2029) or the SQS ScalingConfig, so the merge
   template adds them, with the parameters, the queue alarms and stage throttling.
2. scripts/split_template.py replaces Chalice's single APIHandler and DefaultRole with one
   function per route (infra/functions.toml: memory, timeout, concurrency, VPC, secrets), each
   with its own role, log group (retention parameter) and alarms, plus the dashboard.
3. cfn-lint on the result; print the bundle sizes.

Usage: python scripts/package.py [--stage prod] [--out build/package]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.split_template import app_routes, load_settings, split  # noqa: E402


def chalice_package(stage: str, out: Path) -> Path:
    env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    subprocess.run([str(BIN / "chalice"), "package", "--stage", stage, "--merge-template",
                    str(ROOT / "infra" / "merge-template.json"), str(out)],
                   cwd=ROOT, env=env, check=True)
    return out / "sam.json"


def split_file(template_path: Path) -> dict[str, object]:
    from app import app  # the route table: method, path and view name of every route

    template = split(json.loads(template_path.read_text()), app_routes(app), load_settings())
    template_path.write_text(json.dumps(template, indent=2) + "\n")
    return template


# The Lambda Python runtime ships the AWS SDK; bundling our own copy is over half the zip (botocore
# alone is ~16 MB of ~30). We call only long-stable APIs (SQS send/receive/attributes, Secrets
# Manager get), so the runtime's copy serves; dev and tests keep the pinned one (requirements.txt).
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")


def strip_runtime_provided(zip_path: Path, packages: tuple[str, ...] = RUNTIME_PROVIDED) -> list[str]:
    """Rewrite ``zip_path`` without the top-level ``packages`` (and their dist-info); return what went."""
    def dropped(name: str) -> bool:
        top = name.split("/", 1)[0]
        project = top.split("-", 1)[0] if top.endswith(".dist-info") else top
        return project in packages

    removed: set[str] = set()
    tmp = zip_path.with_suffix(".tmp")
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if dropped(info.filename):
                removed.add(info.filename.split("/", 1)[0])
                continue
            dst.writestr(info, src.read(info.filename))
    tmp.replace(zip_path)
    return sorted(removed)


def bundle_sizes(out: Path) -> dict[str, int]:
    """Bytes of each zip `chalice package` wrote (the app, and the dependency layer if any)."""
    return {p.name: p.stat().st_size for p in sorted(out.glob("*.zip"))}


def package(stage: str, out: Path) -> Path:
    template_path = chalice_package(stage, out)
    before = (out / "deployment.zip").stat().st_size
    removed = strip_runtime_provided(out / "deployment.zip")
    print(f"left out (the Lambda runtime provides them): {', '.join(removed) or 'nothing'}; "
          f"bundle was {before / 1_048_576:.1f} MiB")
    template = split_file(template_path)
    subprocess.run([str(BIN / "cfn-lint"), str(template_path)], cwd=ROOT, check=True)
    functions = [k for k, v in template["Resources"].items()  # type: ignore[attr-defined]
                 if v.get("Type") == "AWS::Serverless::Function"]
    print(f"functions: {len(functions)}")
    for name, size in bundle_sizes(out).items():
        print(f"{name}: {size / 1_048_576:.1f} MiB ({size} bytes)")
    return template_path


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stage", default="prod")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "package")
    args = parser.parse_args()
    print(f"template: {package(args.stage, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

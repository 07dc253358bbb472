"""`make package`: the CloudFormation (SAM) template for a stage, then cfn-lint on it.

Chalice cannot declare the SQS queue, its DLQ or partial batch responses (aws/chalice#2029), so
infra/merge-template.json adds them (and alarms, stage throttling, the runtime IAM policy).
Usage: python scripts/package.py [--stage prod] [--out build/package]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def package(stage: str, out: Path) -> Path:
    env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    subprocess.run([str(BIN / "chalice"), "package", "--stage", stage, "--merge-template",
                    str(ROOT / "infra" / "merge-template.json"), str(out)],
                   cwd=ROOT, env=env, check=True)
    template = out / "sam.json"
    subprocess.run([str(BIN / "cfn-lint"), str(template)], cwd=ROOT, check=True)
    return template


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="prod")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "package")
    args = parser.parse_args()
    print(f"template: {package(args.stage, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

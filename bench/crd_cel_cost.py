"""The API server's estimated CEL cost of every rule in the generated CRDs (see docs/validation.md).

kube-apiserver refuses a CRD whose rules could cost more than 10,000,000 units each or
100,000,000 together, estimating the worst case from the schema's bounds (maxItems, maxLength,
maxProperties). This prints kube-apiserver's own estimates: it builds ``bench/cel_cost_go`` inside a
Kubernetes source tree (the estimator is Go code in k8s.io/apiextensions-apiserver) and feeds it
``tunefleet crd``.

    .venv/bin/python -m bench.crd_cel_cost --kubernetes-src /work/k8s/src

Needs ``go`` on PATH (or ``--go``). The first build takes minutes; later ones use Go's cache.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from controller.kube.crd import render_crds_yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "cel_cost_go" / "main.go"


def build(kubernetes_src: Path, go: str) -> Path:
    """The estimator, built in ``kubernetes_src`` (a temporary cmd/ folder, removed afterwards)."""
    package = kubernetes_src / "cmd" / "tunefleet-crd-cel-cost"
    binary = Path(tempfile.mkdtemp(prefix="crd-cel-cost-")) / "crd-cel-cost"
    package.mkdir(parents=True, exist_ok=False)
    try:
        shutil.copy(SOURCE, package / "main.go")
        subprocess.run(
            [go, "build", "-mod=vendor", "-o", str(binary), "./cmd/tunefleet-crd-cel-cost"],
            cwd=kubernetes_src,
            check=True,
        )
    finally:
        shutil.rmtree(package)
    return binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-src", type=Path, required=True, help="a Kubernetes source tree")
    parser.add_argument("--go", default="go", help="the go command")
    args = parser.parse_args(argv)
    binary = build(args.kubernetes_src.resolve(), args.go)
    try:
        return subprocess.run([str(binary)], input=render_crds_yaml(), text=True, check=False).returncode
    finally:
        shutil.rmtree(binary.parent)


if __name__ == "__main__":
    sys.exit(main())

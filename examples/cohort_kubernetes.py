"""A cohort on Kubernetes: the Dask operator (dask-kubernetes) starts a Dask cluster of worker pods, and
LightSegLib.batch runs the cohort on it exactly as it does on one machine.

Needs: the Dask Kubernetes operator installed in the cluster (helm install dask-kubernetes-operator
dask/dask-kubernetes-operator), a container image with ``pip install 'lightseglib[cluster]'`` (the same versions
as where this script runs), and a ReadWriteMany volume claim that holds the inputs and receives the outputs
(inputs and outputs move by path, never through the scheduler); it is mounted at /data in every worker pod and
paths in the manifest must be /data/... paths. Run it from a pod that mounts the same claim at /data:

    pip install 'lightseglib[cluster]' dask-kubernetes
    python examples/cohort_kubernetes.py /data/cohort.csv /data/liver-run --image registry.example.org/lightseg:0.1.0 \\
        --claim cohort-data --pods 50
    python examples/cohort_kubernetes.py /data/cohort.csv /data/out --print-spec     # the DaskCluster resource only

Each pod runs CPUS worker processes of one thread each (one model session per process, one ONNX Runtime thread
per case); LightSegLib counts the pod's CPU quota, not the node's cores.
"""
import argparse
import json

from dask_kubernetes.operator import KubeCluster, make_cluster_spec
from distributed import Client


def cluster_spec(args) -> dict:
    spec = make_cluster_spec(
        name="lightseg-cohort",
        image=args.image,
        n_workers=args.pods,
        resources={"requests": {"cpu": str(args.cpus), "memory": f"{2 * args.cpus}Gi"},
                   "limits": {"cpu": str(args.cpus), "memory": f"{2 * args.cpus}Gi"}},
        worker_command=f"dask-worker --nworkers {args.cpus} --nthreads 1 --memory-limit 2GiB",  # per process
    )
    pod = spec["spec"]["worker"]["spec"]
    pod["volumes"] = [{"name": "cohort", "persistentVolumeClaim": {"claimName": args.claim}}]
    pod["containers"][0]["volumeMounts"] = [{"name": "cohort", "mountPath": "/data"}]
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", help="manifest CSV with /data/... paths, or a folder of volumes under /data")
    parser.add_argument("out", help="output folder under /data")
    parser.add_argument("--model", default="liver-ct")
    parser.add_argument("--image", default="registry.example.org/lightseg:0.1.0")
    parser.add_argument("--claim", default="cohort-data", help="the ReadWriteMany PersistentVolumeClaim")
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--cpus", type=int, default=4, help="CPUs per pod")
    parser.add_argument("--print-spec", action="store_true", help="print the DaskCluster resource and stop")
    args = parser.parse_args()
    spec = cluster_spec(args)
    if args.print_spec:
        print(json.dumps(spec, indent=1))
        return
    with KubeCluster(custom_cluster_spec=spec) as cluster, Client(cluster) as client:
        table = run(args.cohort, args.model, client, args.out, progress="bar")
    print(table.attrs["summary"])


def run(*args, **kwargs):
    from LightSegLib import batch

    return batch.run(*args, **kwargs)


if __name__ == "__main__":
    main()

"""A cohort on a Slurm cluster: dask-jobqueue submits the Dask workers as Slurm jobs, and LightSegLib.batch runs
the cohort on them exactly as it does on one machine.

Needs, on the login node and on the compute nodes (one shared virtual environment or conda env):
    pip install 'lightseglib[cluster]' dask-jobqueue
and one file system that every node sees for the inputs, the outputs and the table (inputs and outputs move by
path, never through the scheduler). Run it on the login node (or in a small Slurm job of its own):

    python examples/cohort_slurm.py cohort.csv /shared/project/liver-run --model liver-ct --jobs 100 \\
        --queue cpu --account myproject
    python examples/cohort_slurm.py cohort.csv out --print-script      # the job script, nothing submitted

Each Slurm job is one node's worth of workers: CORES processes of one thread each (one model session per
process, one ONNX Runtime thread per case: no core is oversubscribed). A rerun with the same OUT does only the
cases that are not finished in its results.csv, so a cut-short allocation is resumed by running it again.
"""
import argparse

from dask_jobqueue import SLURMCluster
from distributed import Client


def slurm_cluster(args) -> SLURMCluster:
    return SLURMCluster(
        queue=args.queue,
        account=args.account,
        cores=args.cores,                       # per job (node)
        processes=args.cores,                   # one worker process per core, one thread each
        memory=f"{args.memory_per_core_gb * args.cores}GB",
        walltime=args.walltime,
        local_directory="$TMPDIR",              # Dask's spill and scratch files: node-local disk
        log_directory="dask-logs",
        job_script_prologue=[f"source {args.venv}/bin/activate"] if args.venv else [],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", help="manifest CSV (case,image or case,ed,es) or a folder of volumes")
    parser.add_argument("out", help="output folder on the shared file system")
    parser.add_argument("--model", default="liver-ct")
    parser.add_argument("--jobs", type=int, default=10, help="Slurm jobs (nodes)")
    parser.add_argument("--cores", type=int, default=32, help="cores per job")
    parser.add_argument("--memory-per-core-gb", type=int, default=2,
                        help="a worker on a 512x512x300 CT peaks near 1 GB (docs/cohorts.md)")
    parser.add_argument("--walltime", default="04:00:00")
    parser.add_argument("--queue", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--venv", default=None, help="environment to activate in each job")
    parser.add_argument("--print-script", action="store_true", help="print the job script and stop")
    args = parser.parse_args()
    cluster = slurm_cluster(args)
    if args.print_script:
        print(cluster.job_script())
        cluster.close()
        return
    cluster.scale(jobs=args.jobs)
    with Client(cluster) as client:
        table = run(args.cohort, args.model, client, args.out, progress="bar")
    cluster.close()
    print(table.attrs["summary"])


def run(*args, **kwargs):
    from LightSegLib import batch

    return batch.run(*args, **kwargs)


if __name__ == "__main__":
    main()

"""The time and memory of a train.py run, from its log: wall time and peak memory (GNU time's `-v` report), the
runtime of each Trainer run in it (the backbone's pretraining, then the training), and the statistics classifier's
penalty choice, as JSON.

    /usr/bin/time -v python train.py configs/multicorpus_cpu.yaml > run.log 2>&1
    python benchmarks/timed_run.py run.log --command "python train.py configs/multicorpus_cpu.yaml" --commit 6276acf \
        --host "2-core AMD EPYC" --load "..." --output benchmarks/results/multicorpus_cpu.json
"""

import argparse
import ast
import json
import re
from pathlib import Path


def read_log(text: str) -> dict:
    """What the log holds: wall seconds, peak RSS in GiB, the Trainer runtimes in seconds (in order), and the
    statistics classifier's chosen C with the cross-validated UA of each C (None when the run has none)."""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([0-9:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if not wall or not rss:
        raise ValueError("no GNU time -v report in the log: run train.py under /usr/bin/time -v")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = 60 * seconds + float(part)
    runtimes = [float(ast.literal_eval(match)["train_runtime"]) for match in re.findall(r"\{'train_runtime'[^}]*\}", text)]
    choice = re.search(r"Statistics classifier: C=([0-9.e-]+) \(cross-validated UA by C: ([^)]*)\)", text)
    statistics = None
    if choice:
        scores = dict(pair.split(": ") for pair in choice.group(2).split(", "))
        statistics = {"chosen_c": float(choice.group(1)),
                      "cross_validated_ua_by_c": {c: float(ua) for c, ua in scores.items()}}
    return {"wall_seconds": seconds, "peak_rss_gib": round(int(rss.group(1)) / 2**20, 2),
            "trainer_runtime_seconds": runtimes, "statistics_classifier": statistics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    parser.add_argument("--command", required=True, help="the command that was timed")
    parser.add_argument("--commit", required=True)
    parser.add_argument("--date", default=None)
    parser.add_argument("--host", required=True)
    parser.add_argument("--load", default="alone", help="what else ran on the machine meanwhile")
    parser.add_argument("--output", type=Path, help="JSON file (default: print only)")
    args = parser.parse_args()
    result = {"command": args.command, "commit": args.commit, "date": args.date, "host": args.host, "load": args.load,
              **read_log(args.log.read_text())}
    text = json.dumps(result, indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()

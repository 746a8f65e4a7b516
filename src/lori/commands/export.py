"""``lori export RUN --out DIR``: a self-contained, Hub-ready folder of a student (lori.export)."""

from __future__ import annotations

SINGLE_PROCESS = True


def add_arguments(p) -> None:
    p.add_argument("run", help="a run folder (newest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="the export folder (new, empty, or an earlier export)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="weights above this are split into shards with model.safetensors.index.json (default 5GB)")
    p.add_argument("--results", help="results.json whose rows of this checkpoint go into the model card "
                                     "(default: the run's eval-*/results.json)")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the folder to this Hub model repo (USER/NAME; "
                                                         "needs network and `hf auth login`)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")


def run(args) -> None:
    from ..export import export

    export(args.run, args.out, max_shard_size=args.max_shard_size, results=args.results,
           push_to_hub=args.push_to_hub, private=args.private)

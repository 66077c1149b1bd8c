"""The `recfm` command line. Each subcommand is a thin layer over a library function.

Bad input, bad configs and missing files end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from recfm.data.errors import DataError
from recfm.platform.config import (
    DEMO,
    ConfigError,
    RecfmConfig,
    StoreConfig,
    check_tune_space,
    load_config,
    to_yaml,
)

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.run(args) or 0
    except (DataError, ConfigError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"recfm: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("recfm: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recfm", description="Recommendation foundation-model platform.")
    commands = parser.add_subparsers(metavar="COMMAND")

    data = commands.add_parser("data", help="import, synthesise and prepare event data")
    data_commands = data.add_subparsers(metavar="STEP")

    imp = data_commands.add_parser("import", help="import a source into recfm's event schema")
    imp.add_argument("format", choices=["movielens", "sequences", "events"])
    imp.add_argument("source", help="MovieLens folder, sequence file, or event file(s) / folder")
    imp.add_argument("--out", required=True, help="output directory")
    mode = imp.add_mutually_exclusive_group()
    mode.add_argument("--strict", dest="mode", action="store_const", const="strict",
                      help="stop at the first bad row with a one-line error (default)")
    mode.add_argument("--lenient", dest="mode", action="store_const", const="lenient",
                      help="quarantine bad rows to quarantine.csv and print counts")
    imp.set_defaults(mode="strict")
    imp.add_argument("--map", nargs="*", default=[], metavar="FIELD=COLUMN",
                     help="events: source column for a schema field, e.g. user_id=uid ts=time")
    imp.add_argument("--ts-unit", default="s", choices=["s", "ms", "us", "ns", "iso"], help="events: time unit")
    imp.add_argument("--id-type", default=None, choices=["int", "str"],
                     help="ids as integers or text (default: int for sequences, str for events)")
    imp.add_argument("--items", help="events: item catalog file (CSV or Parquet) to check items against")
    imp.set_defaults(run=_import)

    synth = data_commands.add_parser("synth", help="write synthetic events with known structure")
    synth.add_argument("--users", type=int, required=True)
    synth.add_argument("--items", type=int, required=True)
    synth.add_argument("--events", type=int, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--clusters", type=int, default=20, help="taste clusters")
    synth.add_argument("--context-share", type=float, default=0.0,
                       help="share of sessions in a second, context-bound taste (mobile mornings; 0 = none)")
    synth.add_argument("--out", required=True)
    synth.set_defaults(run=_synth)

    prep = data_commands.add_parser("prepare", help="build per-user sequences, dense ids and a split")
    prep.add_argument("dataset", help="an imported dataset directory")
    prep.add_argument("--out", required=True)
    prep.add_argument("--split", default="loo", choices=["loo", "time"])
    prep.add_argument("--val-cutoff", type=float, help="time split: timestamp, or quantile in (0, 1); default 0.8")
    prep.add_argument("--test-cutoff", type=float, help="time split: timestamp, or quantile in (0, 1); default 0.9")
    prep.add_argument("--actions", help="comma-separated interaction actions (default: the importer's)")
    prep.set_defaults(run=_prepare)

    ev = commands.add_parser("eval", help="evaluate the baselines (full ranking) on a dataset")
    _config_args(ev)
    ev.add_argument("--data", help="a prepared directory to use instead of the config's data section")
    ev.set_defaults(run=_eval)

    content = commands.add_parser("content", help="item content: text vectors from the offline encoder")
    content_commands = content.add_subparsers(metavar="STEP")
    embed = content_commands.add_parser("embed", help="encode the catalog's item text (title, year, genres, tags) "
                                        "and store the vectors with the prepared data; cached by text hash")
    _config_args(embed)
    embed.add_argument("--data", help="a prepared directory to use instead of the config's data section")
    embed.set_defaults(run=_content_embed)

    tr = commands.add_parser("train", help="run the pipeline's stages (the config's `stages`; by default prepare, fm, "
                                           "refit, evaluate): train the foundation model on Ray and test it "
                                           "beside the baselines")
    _config_args(tr)
    tr.add_argument("--print-config", action="store_true", help="print the resolved config first")
    tr.add_argument("--quiet", action="store_true",
                    help="one line per stage and a summary (every line still goes to the run's log.txt)")
    tr.add_argument("--address", help="Ray cluster address (default: a local Ray started for this run)")
    tr.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                    help="continue a run from its latest checkpoint (default: the newest run under runs/)")
    tr.set_defaults(run=_train)

    tn = commands.add_parser("tune", help="search the foundation model's settings (tune.space) on Ray Tune, on "
                                          "train + validation data only, then test the best trial once")
    _config_args(tn)
    tn.add_argument("--address", help="Ray cluster address (default: a local Ray started for this search)")
    tn.add_argument("--resume", nargs="?", const="latest", metavar="TUNE_DIR",
                    help="continue an interrupted search: finished trials are kept, unfinished ones continue "
                         "(default: the newest search under runs/)")
    tn.set_defaults(run=_tune)

    heads = commands.add_parser("heads", help="the task heads of a trained run")
    heads_commands = heads.add_subparsers(metavar="STEP")
    heads_train = heads_commands.add_parser("train", help="train and test the heads of a run (data.split=time)")
    heads_train.add_argument("run_dir", nargs="?", help="a training run (default: the newest under runs/)")
    heads_train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. heads.mode=separate")
    heads_train.add_argument("--out", default="heads", help="directory name inside the run (default: heads)")
    heads_train.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    heads_train.set_defaults(run=_heads_train)

    dis = commands.add_parser("distill", help="train a small student from a run's FM on Ray, and test it")
    dis.add_argument("run_dir", nargs="?", help="a training run (default: the newest under runs/)")
    dis.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. distill.dim=48")
    dis.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    dis.set_defaults(run=_distill)

    exp = commands.add_parser("export", help="write a run's student (or teacher) as torch.export + ONNX")
    exp.add_argument("run_dir", nargs="?", help="a training run (default: the newest under runs/)")
    exp.add_argument("--model", default="student", choices=["student", "teacher"])
    exp.add_argument("--out", help="export directory (default: RUN/export/<model>)")
    exp.set_defaults(run=_export)

    push = commands.add_parser("push-embeddings", help="push a run's user and item vectors to the embedding store")
    push.add_argument("run_dir", nargs="?", help="a training run (default: the newest under runs/)")
    push.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. store.chunk_rows=1024")
    push.add_argument("--store", help=f"store URI: a directory or postgresql://… (default: store.uri, "
                                      f"{StoreConfig.uri})")
    push.add_argument("--collection", help=f"collection in the store (default: store.collection, "
                                           f"{StoreConfig.collection})")
    push.add_argument("--model", choices=["teacher", "student"], help="whose vectors (default: store.model)")
    push.add_argument("--version", help="version name (default: <run>-<model>-<weights hash>; the same name "
                                        "resumes a push)")
    push.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    push.add_argument("--no-progress", action="store_true", help="no progress bar")
    push.add_argument("--new-items", metavar="MOVIES_CSV", help="also push titles added after training (movieId, "
                      "title, genres) from their text alone: needs a run trained with model.content=true")
    push.set_defaults(run=_push)

    emb = commands.add_parser("embeddings", help="read the embedding store (what other systems consume)")
    emb_commands = emb.add_subparsers(metavar="ACTION")
    get = emb_commands.add_parser("get", help="vectors by id")
    get.add_argument("--kind", required=True, choices=["user", "item"])
    get.add_argument("--ids", required=True, help="comma-separated ids")
    sim = emb_commands.add_parser("similar", help="nearest items to an item (or to a user's vector)")
    target = sim.add_mutually_exclusive_group(required=True)
    target.add_argument("--item", help="item id: its nearest other items")
    target.add_argument("--user", help="user id: the items nearest their vector (the model's ranking)")
    sim.add_argument("-k", type=int, default=10, help="how many items")
    ver = emb_commands.add_parser("versions", help="list the versions, the current one marked")
    back = emb_commands.add_parser("rollback", help="make an earlier version current again")
    back.add_argument("--to", help="version name (default: the one current before this one)")
    for p, action in ((get, "get"), (sim, "similar"), (ver, "versions"), (back, "rollback")):
        p.add_argument("--store", default=None, help=f"store URI (default: $RECFM_STORE or {StoreConfig.uri})")
        p.add_argument("--collection", default=StoreConfig.collection)
        if action in ("get", "similar"):
            p.add_argument("--version", help="read this published version instead of the current one")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(run=_embeddings, action=action)

    rec = commands.add_parser("recommend", help="serve a request with a run's heads")
    rec_commands = rec.add_subparsers(metavar="TASK")
    for task, text in (("homepage", "a homepage page of rows for a user"),
                       ("search", "items for a text query"), ("similars", "items like a source item")):
        p = rec_commands.add_parser(task, help=text)
        p.add_argument("--user", required=task == "homepage", help="user id from the data")
        if task == "search":
            p.add_argument("--query", required=True, help="query text")
        if task == "similars":
            p.add_argument("--item", required=True, help="source item id from the data (MovieLens movieId)")
        p.add_argument("--surface", help="surface the request comes from")
        p.add_argument("--device", help="device the request comes from")
        p.add_argument("--hour", type=int, help="hour of day, UTC (default: now)")
        p.add_argument("-k", type=int, default=10, help="how many items")
        if task == "homepage":
            p.add_argument("--flat", action="store_true", help="one ranked list instead of a page of rows")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--run", dest="run_dir", help="a trained run (default: the newest under runs/)")
        p.set_defaults(run=_recommend, task=task)

    show = commands.add_parser("config", help="print the resolved configuration")
    _config_args(show)
    show.add_argument("--reference", action="store_true",
                      help="print the reference of every key instead (docs/configuration.md is this output)")
    show.set_defaults(run=_show_config)

    demo = commands.add_parser("demo", help="every stage of the pipeline on the embedded defaults (the bundled "
                                           "ml-latest-small, time split): prepare, train the foundation model, "
                                           "refit and test it beside the baselines, train and test the task "
                                           "heads, distil a student, export it and push embeddings to the store")
    _config_args(demo)
    demo.add_argument("--print-config", action="store_true", help="print the resolved config first")
    demo.add_argument("--verbose", action="store_true",
                      help="print every stage's lines, not only one per stage and the summary (all are in log.txt)")
    demo.add_argument("--address", help="Ray cluster address (default: a local Ray started for this run)")
    demo.set_defaults(run=_demo)
    return parser


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (default: the embedded demo defaults)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. eval.ks=[10,20]")


def _show_config(args: argparse.Namespace) -> None:
    if args.reference:
        from recfm.platform.config_reference import reference

        print(reference(), end="")
    else:
        print(to_yaml(_config(args)), end="")


def _config(args: argparse.Namespace, base: dict | None = None) -> RecfmConfig:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():  # only overrides were given
        config, overrides = None, [config, *overrides]
    return load_config(config, overrides, base=base)


def _import(args: argparse.Namespace) -> None:
    from recfm.data.events import import_events
    from recfm.data.importing import summary
    from recfm.data.movielens import import_movielens
    from recfm.data.sequences import import_sequences

    if args.format == "movielens":
        info = import_movielens(Path(args.source), Path(args.out), args.mode)
    elif args.format == "sequences":
        info = import_sequences(Path(args.source), Path(args.out), args.mode, args.id_type or "int")
    else:
        mapping = dict(_pair(m) for m in args.map)
        info = import_events(Path(args.source), Path(args.out), args.mode, mapping, args.ts_unit,
                             args.id_type or "str", Path(args.items) if args.items else None)
    print(summary(info))


def _pair(text: str) -> tuple[str, str]:
    field, sep, column = text.partition("=")
    if not sep or not field or not column:
        raise ValueError(f"--map takes FIELD=COLUMN pairs, not {text!r}")
    return field, column


def _synth(args: argparse.Namespace) -> None:
    from recfm.data.synth import SynthParams, synthesize

    start = time.perf_counter()
    info = synthesize(Path(args.out), args.users, args.items, args.events, args.seed, args.clusters, progress=True,
                      params=SynthParams(context_share=args.context_share))
    print(f"wrote {info.events:,} events of {args.users:,} users on {info.items:,} items to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")


def _prepare(args: argparse.Namespace) -> None:
    from recfm.data.prepare import describe, prepare

    actions = [a.strip() for a in args.actions.split(",")] if args.actions else None
    start = time.perf_counter()
    info = prepare(Path(args.dataset), Path(args.out), args.split, args.val_cutoff, args.test_cutoff, actions)
    print(describe(info) + f" ({time.perf_counter() - start:.1f} s)")


def _eval(args: argparse.Namespace) -> None:
    cfg = _config(args)
    evaluate_baselines(cfg, Path(args.data) if args.data else None)


def _content_embed(args: argparse.Namespace) -> None:
    from recfm.data.content import embed_catalog
    from recfm.data.pipeline import ensure_prepared

    cfg = _config(args)
    prepared = Path(args.data) if args.data else ensure_prepared(cfg.data)
    embed_catalog(prepared, Path(cfg.content.cache_dir), cfg.content.batch_size, progress=sys.stderr.isatty())


def _config_or_resumed(args: argparse.Namespace, latest, what: str) -> tuple[RecfmConfig, Path | None]:
    """The config of a new job, or with --resume the saved config of the directory it continues (`latest()`
    for a bare --resume), with any KEY=VALUE overrides; printed with --print-config."""
    from recfm.run.files import CONFIG_FILE

    resume = None
    if args.resume:
        resume = latest() if args.resume == "latest" else Path(args.resume)
        if resume is None or not (resume / CONFIG_FILE).exists():
            raise FileNotFoundError(f"no {what} to resume at {resume or 'runs/'}")
        cfg = load_config(resume / CONFIG_FILE, [o for o in [args.config, *args.overrides] if o and "=" in o])
        print(f"resuming {resume}")
    else:
        cfg = _config(args)
    if getattr(args, "print_config", False):
        print(to_yaml(cfg), end="")
    return cfg, resume


def _train(args: argparse.Namespace) -> None:
    from recfm.run.run import latest_run

    cfg, resume = _config_or_resumed(args, latest_run, "run")
    from recfm.platform.pipeline import run_pipeline  # torch and Ray: only once the config is known to be good

    run_pipeline(cfg, args.address, resume, verbose=not args.quiet)


def _tune(args: argparse.Namespace) -> None:
    def latest():
        from recfm.platform.tune import latest_tune_dir

        return latest_tune_dir()

    cfg, resume = _config_or_resumed(args, latest, "search")
    check_tune_space(cfg)
    from recfm.platform.tune import tune  # Ray Tune: only once the config is known to be good

    tune(cfg, args.address, resume)


def _demo(args: argparse.Namespace) -> None:
    cfg = _config(args, base=DEMO)  # every stage, at the demo's size, unless told otherwise
    if args.print_config:
        print(to_yaml(cfg), end="")
    from recfm.platform.pipeline import run_pipeline  # torch and Ray: only once the config is known to be good

    run_pipeline(cfg, args.address, verbose=args.verbose)


def _heads_train(args: argparse.Namespace) -> None:
    from recfm.platform.runtime import shutdown_ray_if_started
    from recfm.platform.train.heads import train_heads

    run, cfg = _run_and_config(args)
    with shutdown_ray_if_started():
        train_heads(run, cfg, args.address, out_name=args.out)


def _run_and_config(args: argparse.Namespace) -> tuple[Path, RecfmConfig]:
    """A run directory argument (the newest run when absent) and its config with the KEY=VALUE overrides."""
    from recfm.run.files import CONFIG_FILE
    from recfm.run.run import latest_run

    run = Path(args.run_dir) if args.run_dir and "=" not in args.run_dir else latest_run()
    overrides = [o for o in [args.run_dir, *getattr(args, "overrides", [])] if o and "=" in o]
    if run is None or not (run / CONFIG_FILE).exists():
        raise FileNotFoundError(f"no training run at {run or 'runs/'}")
    return run, load_config(run / CONFIG_FILE, overrides, source_needed=False)  # the run has its data


def _distill(args: argparse.Namespace) -> None:
    from recfm.platform.runtime import shutdown_ray_if_started
    from recfm.platform.train.distill import distill

    run, cfg = _run_and_config(args)
    with shutdown_ray_if_started():
        distill(run, cfg, args.address)


def _export(args: argparse.Namespace) -> None:
    from recfm.platform.runtime import configure_process
    from recfm.serving_exports.export import export_trained

    run, cfg = _run_and_config(args)
    configure_process(cfg.threads)
    export_trained(run, args.model, Path(args.out) if args.out else None)


def _push(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from recfm.platform.push import push_embeddings
    from recfm.platform.runtime import configure_process, shutdown_ray_if_started

    run, cfg = _run_and_config(args)
    store = replace(cfg.store, **{k: v for k, v in (("uri", args.store), ("collection", args.collection),
                                                    ("model", args.model)) if v})
    store.validate()
    configure_process(cfg.threads)
    with shutdown_ray_if_started():
        push_embeddings(run, store, args.version, args.address, progress=not args.no_progress,
                        new_items=Path(args.new_items) if args.new_items else None,
                        content_cache=Path(cfg.content.cache_dir))


def _embeddings(args: argparse.Namespace) -> None:
    import json
    import os

    from recfm.serving_exports.backends import open_store

    uri = args.store or os.environ.get("RECFM_STORE") or StoreConfig.uri
    if "://" not in uri and not Path(uri).exists():
        raise FileNotFoundError(f"no embedding store at {uri}: run `make demo` or `recfm push-embeddings RUN` "
                                f"first, or pass --store")
    with open_store(uri, args.collection) as store:
        if args.action == "versions":
            current = store.current()
            rows = [v.to_dict() | {"current": bool(current and v.number == current.number)} for v in store.versions()]
            print(json.dumps(rows, indent=1) if args.json else _versions_text(rows))
            return
        if args.action == "rollback":
            info = store.rollback(args.to)
            print(json.dumps(info.to_dict()) if args.json else f"version {info.name!r} is current again")
            return
        snap = store.snapshot(args.version)
        if args.action == "get":
            rows = snap.get(args.kind, [i.strip() for i in args.ids.split(",") if i.strip()])
            if rows.missing and not rows.ids:
                raise ValueError(f"version {snap.info.name!r} has none of these {args.kind} ids: "
                                 f"{', '.join(rows.missing[:10])}")
            out = {"version": snap.info.name, "kind": args.kind, "dim": snap.info.dim, "missing": rows.missing,
                   "vectors": {i: [round(float(x), 6) for x in v] for i, v in zip(rows.ids, rows.vectors, strict=True)}}
            print(json.dumps(out) if args.json else "\n".join(
                [f"{i}\t{' '.join(f'{x:.4f}' for x in v)}" for i, v in out["vectors"].items()] +
                ([f"missing: {', '.join(rows.missing)}"] if rows.missing else [])))
            return
        if args.k < 1:
            raise ValueError("-k must be at least 1")
        if args.item is not None:
            rows, source = snap.similar("item", args.item, args.k), f"item {args.item}"
        else:
            user = snap.get("user", [args.user])
            if user.missing:
                raise ValueError(f"version {snap.info.name!r} has no user {args.user!r}")
            rows, source = snap.nearest("item", user.vectors[0], args.k), f"user {args.user}"
        if args.json:
            print(json.dumps({"version": snap.info.name, "source": source, "items": [
                {"id": i, "title": t, "score": round(float(s), 6)}
                for i, t, s in zip(rows.ids, rows.labels, rows.scores, strict=True)]}))
        else:
            label = snap.get("item", [args.item]).labels[0] if args.item is not None else None
            print(f"nearest items to {source}{f' ({label})' if label else ''} in version {snap.info.name!r} "
                  f"({snap.info.metric}):")
            for n, (i, t, s) in enumerate(zip(rows.ids, rows.labels, rows.scores, strict=True), 1):
                print(f"{n:3d}. {s:8.4f}  {t or i}  [{i}]")


def _versions_text(rows: list[dict]) -> str:
    if not rows:
        return "no versions"
    lines = []
    for r in rows:
        counts = ", ".join(f"{v['rows']:,} {k}s" for k, v in r["stats"].items()) or "-"
        lines.append(f"{'*' if r['current'] else ' '} {r['name']}  {r['status']}  dim {r['dim']} {r['metric']}  "
                     f"{counts}  model {r['meta'].get('model', '?')} of {r['meta'].get('run_id', '?')}  "
                     f"created {r['created']}  promoted {r['promoted'] or '-'}")
    return "\n".join(lines)


def _recommend(args: argparse.Namespace) -> None:
    from recfm.heads.context import Request
    from recfm.platform.recommend import Recommender, format_json, format_text
    from recfm.platform.runtime import configure_process

    if args.k < 1:
        raise ValueError("-k must be at least 1")
    configure_process()
    recommender = Recommender(Path(args.run_dir) if args.run_dir else None)
    if args.task == "homepage" and not args.flat:
        rec = recommender.homepage(args.user, args.hour)
    else:
        request = Request(args.task, user=args.user, query=getattr(args, "query", None),
                          item=getattr(args, "item", None), surface=args.surface, device=args.device, hour=args.hour)
        rec = recommender.recommend(request, args.k)
    print(format_json(rec) if args.json else format_text(rec))


def evaluate_baselines(cfg: RecfmConfig, prepared: Path | None = None) -> Path:
    """Prepares the data if needed, runs the baselines and writes the results table into a run directory."""
    import torch

    from recfm.data.dataset import Sequences
    from recfm.data.pipeline import ensure_prepared
    from recfm.platform.evaluation.harness import run_baselines
    from recfm.platform.evaluation.report import write_results
    from recfm.platform.rundir import create_run_dir

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    prepared = prepared or ensure_prepared(cfg.data)
    seqs = Sequences.load(prepared)
    e = cfg.eval
    results, notes = run_baselines(seqs, e.ks, e.baselines, e.ease_lambdas, e.ease_max_items, e.knn_neighbors,
                                   e.knn_shrinks, e.batch_size, e.seed, val_targets=e.val_targets)
    run_dir = create_run_dir(cfg)
    print(write_results(run_dir, results, seqs.info, e.ks, notes))
    print(f"results written to {run_dir}")
    return run_dir


if __name__ == "__main__":
    sys.exit(main())

"""RecBole 1.2.1 SASRec on Amazon Beauty: training throughput and leave-one-out quality, one JSON line on stdout.

Run it with RecBole's own venv (see setup.sh), never recfm's:

    bench/.venv-recbole/bin/python bench/recbole/sasrec_run.py --budget-s 600 --threads 2
    bench/.venv-recbole/bin/python bench/recbole/sasrec_run.py --throughput-steps 50 --threads 2

Data: Beauty.txt.gz (one line per user, `user item item ...` in time order) becomes RecBole's atomic
`beauty.inter` (user_id:token, item_id:token, timestamp:float = position in the user's sequence), with all
of RecBole's interaction filtering off, so 22,363 users / 12,101 items / 198,502 interactions all stay.

Training: RecBole's own data pipeline (SequentialDataset augmentation: one sample per prefix -> next item,
the prefix cut to MAX_ITEM_LIST_LENGTH) and RecBole's own SASRec with loss_type CE (full softmax over the
catalog, no negative sampling). The epoch loop is this script's copy of Trainer._train_epoch (zero_grad,
model.calculate_loss, backward, optimizer step with the Trainer's Adam; RecBole's default clip_grad_norm is
None and AMP is off on CPU), written out so that the time budget, the event count and the timers sit
exactly around the training steps.

Evaluation: RecBole's Trainer.evaluate (full ranking, NDCG@10 / Hit@10) on its LS valid_and_test split.
RecBole's full-sort evaluation does not exclude a sequential user's history (FullSortEvalDataLoader
returns history_index=None for sequential models); recfm's does, so the Trainer here adds every item
the user had before the target (the whole history, not only the last max_len) to RecBole's own
`scores[history_index] = -inf` mask. `--keep-history` gives RecBole's unmasked behaviour.

Budget (--budget-s): wall clock of the train+validate loop, validation included (as recfm's max_minutes),
checked before every training step: the epoch running when it runs out is cut short, validated, and
training stops; the best-validation weights (kept in memory) are then tested. --throughput-steps N instead
times N steps after --warmup-steps and evaluates nothing.

Runtime patches (nothing in site-packages is edited): RecBole's sine.py turns on
torch.autograd.set_detect_anomaly(True) for the whole process when recbole.model.sequential_recommender is
imported; it is switched off again (--anomaly-detection keeps it). Config() reads `--key=value` from
sys.argv, so it gets an empty argv. The best model is kept in memory, so RecBole's torch.load of its
checkpoint (weights_only default changed in torch 2.6) is never called.

Timers (time.perf_counter): train_seconds covers the training loop, i.e. fetching each batch from RecBole's
train DataLoader plus forward/backward/step (what a training epoch costs; recfm's events/s times its epoch
loop the same way); compute_seconds only the forward/backward/step part. Data preparation, model building
and evaluation are outside both. events = training samples processed = targets predicted (SASRec in
RecBole predicts one target per augmented prefix sample).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = "/work/shared/data/amazon-beauty/Beauty.txt.gz"
DATASET = "beauty"
EXPECTED = {"users": 22363, "items": 12101, "interactions": 198502}  # the published Beauty.txt


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--workdir", default=None, help="atomic files, RecBole logs (default: a temp dir, removed)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--inner", type=int, default=None, help="feed-forward size (default 4 x hidden, RecBole's 256)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--eval-batch", type=int, default=1024, help="users per evaluation batch")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--dropout", type=float, default=0.2, help="hidden_dropout_prob and attn_dropout_prob")
    p.add_argument("--loss", default="CE", choices=["CE"], help="full softmax CE, no negative sampling")
    p.add_argument("--budget-s", type=float, default=600.0,
                   help="wall-clock budget of the train+validate loop (validation included); checked before "
                        "every step, so the epoch running when it ends is cut short, validated, and the run stops")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--throughput-steps", type=int, default=0,
                   help="if >0: time this many training steps (after --warmup-steps) and skip evaluation")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--keep-history", action="store_true",
                   help="RecBole's default: do not exclude the user's history from the full ranking")
    p.add_argument("--anomaly-detection", action="store_true",
                   help="keep RecBole's import-time torch.autograd.set_detect_anomaly(True) (off by default)")
    p.add_argument("--no-count-check", action="store_true", help="skip the Beauty user/item/interaction asserts")
    return p.parse_args(argv)


def write_atomic(data: Path, root: Path) -> dict[str, list[str]]:
    """Writes ROOT/beauty/beauty.inter; returns user token -> item tokens in time order."""
    sequences: dict[str, list[str]] = {}
    with gzip.open(data, "rt") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            if parts[0] in sequences:
                raise ValueError(f"user {parts[0]} appears on two lines of {data}")
            sequences[parts[0]] = parts[1:]
    out = root / DATASET
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{DATASET}.inter.tmp"
    with open(tmp, "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, items in sequences.items():
            f.writelines(f"{user}\t{item}\t{pos}\n" for pos, item in enumerate(items))
    tmp.replace(out / f"{DATASET}.inter")
    return sequences


def recbole_config(args, root: Path) -> dict:
    return {
        "data_path": str(root), "checkpoint_dir": str(root / "saved"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        # no filtering of any kind: every user, item and interaction stays
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "val_interval": None, "rm_dup_inter": None, "filter_inter_by_user_or_item": False,
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "hidden_size": args.hidden, "inner_size": args.inner or 4 * args.hidden,
        "n_layers": args.layers, "n_heads": args.heads,
        "hidden_dropout_prob": args.dropout, "attn_dropout_prob": args.dropout,
        "loss_type": args.loss, "train_neg_sample_args": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10", "metric_decimal_place": 6,
        "train_batch_size": args.batch, "eval_batch_size": args.eval_batch,
        "learning_rate": args.lr, "epochs": args.max_epochs, "shuffle": True,
        "seed": args.seed, "reproducibility": True,
        "use_gpu": False, "worker": 0, "show_progress": False, "state": "INFO",
        "save_dataset": False, "save_dataloaders": False, "log_wandb": False,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    data = Path(args.data).resolve()
    temp = None
    if args.workdir is None:
        temp = tempfile.TemporaryDirectory(prefix="recbole-sasrec-")
        root = Path(temp.name)
    else:
        root = Path(args.workdir).resolve()
        root.mkdir(parents=True, exist_ok=True)

    # RecBole writes ./log/ and ./log_tensorboard/ relative to the working directory
    os.chdir(root)

    import warnings

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)

    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    # Runtime patch 1: importing recbole.model.sequential_recommender imports sine.py, whose module level
    # runs torch.autograd.set_detect_anomaly(True) for the whole process: every backward then records
    # forward tracebacks and checks each gradient for NaN, several times slower on CPU. It is a debugging
    # switch that leaves the numbers unchanged, so it is turned off unless --anomaly-detection.
    torch.autograd.set_detect_anomaly(args.anomaly_detection)
    # pandas 2.2 FutureWarnings about RecBole's chained `fillna(inplace=True)` (harmless with pandas 2.x)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")

    log = logging.getLogger("sasrec_run")

    class HistoryMaskTrainer(Trainer):
        """Trainer whose full-sort evaluation also masks the user's earlier items (recfm's protocol)."""

        history: dict[int, torch.Tensor] | None = None  # internal user id -> internal item ids before target

        def _full_sort_batch_eval(self, batched_data):
            interaction, history_index, positive_u, positive_i = batched_data
            if self.history is not None:
                hist = [self.history[int(u)] for u in interaction[self.config["USER_ID_FIELD"]]]
                rows = torch.repeat_interleave(torch.arange(len(hist)), torch.tensor([len(h) for h in hist]))
                history_index = (rows, torch.cat(hist))
            return super()._full_sort_batch_eval((interaction, history_index, positive_u, positive_i))

    t0 = time.perf_counter()
    sequences = write_atomic(data, root)
    # Config() also parses sys.argv for `--key=value` overrides; this script's own flags must not leak into it
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        config = Config(model="SASRec", dataset=DATASET, config_dict=recbole_config(args, root))
    finally:
        sys.argv = argv
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(args.threads)  # (RecBole does not change it; set again in case)
    dataset = create_dataset(config)
    counts = {"users": dataset.user_num - 1, "items": dataset.item_num - 1, "interactions": dataset.inter_num}
    raw = {"users": len(sequences), "items": len({i for s in sequences.values() for i in s}),
           "interactions": sum(map(len, sequences.values()))}
    log.info(f"dataset counts (RecBole, without [PAD]): {counts}; raw file: {raw}")
    print(f"[sasrec_run] users={counts['users']:,} items={counts['items']:,} "
          f"interactions={counts['interactions']:,}", file=sys.stderr)
    if counts != raw:
        raise SystemExit(f"RecBole dropped data: {counts} != {raw}")
    if not args.no_count_check and data.name == "Beauty.txt.gz" and counts != EXPECTED:
        raise SystemExit(f"unexpected Beauty counts {counts}, expected {EXPECTED}")

    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + 1, config["reproducibility"])  # model init independent of data shuffling
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = HistoryMaskTrainer(config, model)
    optimizer = trainer.optimizer  # RecBole's: Adam(lr=learning_rate, weight_decay=0)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = len(train_data.dataset)
    prep_seconds = time.perf_counter() - t0
    log.info(f"SASRec: {n_params:,} parameters; {n_train:,} training samples, {len(train_data)} batches/epoch; "
             f"{len(valid_data.dataset):,} valid / {len(test_data.dataset):,} test users; prep {prep_seconds:.1f} s")

    histories = {}
    if not args.keep_history:
        # history before the validation target = all but the last 2 items; before the test target = all but 1
        for split, cut in (("valid", 2), ("test", 1)):
            histories[split] = {}
            for user, items in sequences.items():
                uid = int(dataset.token2id(dataset.uid_field, user))
                histories[split][uid] = torch.as_tensor(
                    np.asarray(dataset.token2id(dataset.iid_field, items[:-cut]), dtype=np.int64))

        # alignment check: RecBole's eval rows (prefix, target) must agree with the histories built here
        for split, loader in (("valid", valid_data), ("test", test_data)):
            feat = loader.dataset.inter_feat
            for row in range(0, len(feat), max(1, len(feat) // 200)):
                uid, target = int(feat[dataset.uid_field][row]), int(feat[dataset.iid_field][row])
                length = int(feat[config["ITEM_LIST_LENGTH_FIELD"]][row])
                prefix = feat[dataset.iid_field + config["LIST_SUFFIX"]][row][:length]
                hist = histories[split][uid]
                cut = 2 if split == "valid" else 1
                full = dataset.token2id(dataset.iid_field, sequences[dataset.id2token(dataset.uid_field, uid)])
                if not (torch.equal(prefix, hist[-length:]) and target == int(full[-cut])):
                    raise SystemExit(f"{split} row {row}: RecBole's prefix/target disagree with the data file")

    totals = {"events": 0, "steps": 0, "train_seconds": 0.0, "compute_seconds": 0.0, "loss": 0.0}
    step_seconds: list[float] = []  # per step, for a median that shrugs off a busy machine's stalls

    def train_steps(batches, limit=None, deadline=None):
        """Trainer._train_epoch's step, timed, over one pass of `batches` at most; stops early after `limit`
        steps or once perf_counter() reaches `deadline`. Returns how many steps ran."""
        model.train()
        steps = 0
        it = iter(batches)
        while limit is None or steps < limit:
            started = time.perf_counter()
            if deadline is not None and started >= deadline:
                break
            try:
                interaction = next(it)
            except StopIteration:
                break
            interaction = interaction.to(config["device"])
            computing = time.perf_counter()
            optimizer.zero_grad()
            loss = model.calculate_loss(interaction)
            if torch.isnan(loss):
                raise ValueError("training loss is nan")
            loss.backward()
            optimizer.step()
            done = time.perf_counter()
            totals["train_seconds"] += done - started
            step_seconds.append(done - started)
            totals["compute_seconds"] += done - computing
            totals["events"] += len(interaction)
            totals["steps"] += 1
            totals["loss"] += float(loss.detach())
            steps += 1
        return steps

    result = {
        "framework": "recbole", "model": "SASRec", "recbole_version": recbole.__version__,
        "torch_version": torch.__version__, "numpy_version": np.__version__, "threads": torch.get_num_threads(),
        "n_params": n_params, "anomaly_detection": torch.is_anomaly_enabled(),
        "config": {"hidden": args.hidden, "inner": args.inner or 4 * args.hidden, "layers": args.layers,
                   "heads": args.heads, "max_len": args.max_len, "batch": args.batch, "lr": args.lr,
                   "dropout": args.dropout, "loss": args.loss, "seed": args.seed},
        "data": {**counts, "train_samples_per_epoch": n_train, "batches_per_epoch": len(train_data),
                 "valid_users": len(valid_data.dataset), "test_users": len(test_data.dataset)},
        "prep_seconds": round(prep_seconds, 2),
    }

    if args.throughput_steps > 0:
        result["mode"] = "throughput"
        warm = 0
        while warm < args.warmup_steps:  # warm-up steps: run, then forget their timings and counts
            warm += train_steps(train_data, args.warmup_steps - warm)
        totals.update(events=0, steps=0, train_seconds=0.0, compute_seconds=0.0, loss=0.0)
        step_seconds.clear()
        while totals["steps"] < args.throughput_steps:  # (a fresh pass over the loader when one runs out)
            train_steps(train_data, args.throughput_steps - totals["steps"])
        result["epochs"] = round(totals["steps"] / len(train_data), 3)
    else:
        result["mode"] = "budget"
        best = {"score": -float("inf"), "epoch": 0, "state": None, "valid": None}
        eval_seconds = 0.0
        history = []
        loop_started = time.perf_counter()
        deadline = loop_started + args.budget_s
        stopped = f"max_epochs {args.max_epochs} reached"
        for epoch in range(1, args.max_epochs + 1):
            before = dict(totals)
            steps = train_steps(train_data, deadline=deadline)
            if steps == 0:
                stopped = f"budget of {args.budget_s:g} s spent"
                break
            ev = time.perf_counter()
            trainer.history = histories.get("valid")
            valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
            eval_seconds += time.perf_counter() - ev
            score = float(valid["ndcg@10"])
            row = {"epoch": epoch, "steps": steps, "loss": (totals["loss"] - before["loss"]) / steps,
                   "events_per_s": (totals["events"] - before["events"])
                   / (totals["train_seconds"] - before["train_seconds"]),
                   "valid_ndcg10": score, "valid_hr10": float(valid["hit@10"])}
            history.append(row)
            log.info(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in row.items()))
            if score > best["score"]:
                best = {"score": score, "epoch": epoch, "valid": valid,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            if time.perf_counter() >= deadline:
                stopped = f"budget of {args.budget_s:g} s spent" + (
                    f" (epoch {epoch} cut after {steps} of {len(train_data)} steps)" if steps < len(train_data) else "")
                break
        loop_seconds = time.perf_counter() - loop_started
        if best["state"] is None:
            raise SystemExit(f"no training step fit in --budget-s {args.budget_s:g}")
        model.load_state_dict(best["state"])  # in memory: no checkpoint file, no torch.load
        ev = time.perf_counter()
        trainer.history = histories.get("test")
        test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        test_seconds = time.perf_counter() - ev
        result.update({
            "epochs": round(totals["steps"] / len(train_data), 3), "epochs_started": len(history),
            "stopped": stopped, "best_epoch": best["epoch"],
            "valid_ndcg10": best["score"], "valid_hr10": float(best["valid"]["hit@10"]),
            "test_ndcg10": float(test["ndcg@10"]), "test_hr10": float(test["hit@10"]),
            "history_excluded": not args.keep_history,
            "eval_seconds": round(eval_seconds + test_seconds, 2), "valid_eval_seconds": round(eval_seconds, 2),
            "test_eval_seconds": round(test_seconds, 2), "loop_wall_seconds": round(loop_seconds, 2),
            "per_epoch": history,
        })

    result.update({
        "train_events": totals["events"], "train_steps": totals["steps"],
        "train_seconds": round(totals["train_seconds"], 3), "compute_seconds": round(totals["compute_seconds"], 3),
        "events_per_s": totals["events"] / totals["train_seconds"] if totals["train_seconds"] else None,
        "compute_events_per_s": totals["events"] / totals["compute_seconds"] if totals["compute_seconds"] else None,
        "mean_train_loss": totals["loss"] / max(totals["steps"], 1),
        "median_step_seconds": round(float(np.median(step_seconds)), 4) if step_seconds else None,
        "median_step_events_per_s": args.batch / float(np.median(step_seconds)) if step_seconds else None,
    })
    logging.shutdown()
    if temp is not None:
        os.chdir("/")
        temp.cleanup()
    return result


if __name__ == "__main__":
    # RecBole logs to stderr; anything else that prints goes there too, so stdout carries the JSON line only
    stdout = sys.stdout
    sys.stdout = sys.stderr
    out = main()
    sys.stdout = stdout
    print(json.dumps(out), flush=True)

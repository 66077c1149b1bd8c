"""`recfm distill RUN`: trains a small student from a trained run's FM on Ray (DDP over the workers), then
tests it beside the teacher and the run's baselines. Written into the run directory:

    distill/student.pt    the student's weights          distill/student.json   what rebuilds it
    distill/results.md    teacher, student and baselines on the run's test split   distill/results.json

Protocol: the teacher is the run's best checkpoint (trained on events before validation); the student learns
from it on the same training windows, and its epoch is chosen by validation NDCG@10, as the teacher's was.
On a time split the run's final FM was also refitted up to the test cutoff; the table shows both teachers.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from recfm.data.dataset import Sequences
from recfm.data.prepare import SEQUENCES_DIR
from recfm.platform.config import RecfmConfig
from recfm.platform.evaluation.fm_scorer import FoundationScorer
from recfm.platform.evaluation.harness import evaluate
from recfm.platform.runtime import configure_process
from recfm.platform.train.data import TrainingCollate, training_windows
from recfm.platform.train.small_jobs import EarlyStopping, fit_on_ray, report, unpack
from recfm.platform.trained import TrainedRun
from recfm.run.files import BEST_LINK, DISTILL_DIR, FINAL_LINK, RESULTS_JSON, STUDENT_FILE, STUDENT_SPEC
from recfm.serving_exports.dense import DenseSequenceModel
from recfm.serving_exports.distill import DistillationObjective
from recfm.serving_exports.student import load_student


def distill(run_dir: Path, cfg: RecfmConfig | None = None, address: str | None = None, log=print) -> Path:
    """Distils the FM of the run in `run_dir` (its own config unless `cfg` is given) into `run_dir/distill`."""
    run = TrainedRun.open(run_dir)
    if cfg is not None:
        run.cfg = cfg
    cfg, d = run.cfg, run.cfg.distill
    configure_process(cfg.threads)
    started = time.perf_counter()
    teacher = DenseSequenceModel.from_foundation(run.foundation_model(BEST_LINK))
    student_cfg = replace(teacher.cfg, dim=d.dim, layers=d.layers, heads=d.heads, ffn_mult=d.ffn_mult,
                          dropout=d.dropout, combine="sum")
    student_spec = {"model": asdict(student_cfg), "tokenizer": teacher.tokenizer.to_dict()}
    windows = training_windows(pq.read_table(run.prepared / SEQUENCES_DIR), student_cfg.max_len, cfg.train.seed)
    log(f"distill: teacher {_params(teacher):,} parameters (dim {teacher.cfg.dim}, {teacher.cfg.layers} layers), "
        f"student {_params(DenseSequenceModel.from_spec(student_spec)):,} (dim {d.dim}, {d.layers} layers); "
        f"{windows.num_rows:,} training windows")
    state, best = fit_on_ray(cfg, run.directory, "distill", distill_worker,
                             {"teacher_spec": teacher.spec(), "teacher_state": teacher.state_dict(),
                              "student_spec": student_spec, "windows": windows, "prepared": str(run.prepared)},
                             address)
    log(f"distill: best validation NDCG@10 {best['value']:.4f} at epoch {best['epoch']} ({best['stopped']})")
    out = run.directory / DISTILL_DIR
    out.mkdir(exist_ok=True)
    torch.save(state, out / STUDENT_FILE)
    (out / STUDENT_SPEC).write_text(json.dumps(student_spec, indent=1) + "\n")
    student = load_student(run.directory)
    log(f"distill: trained in {(time.perf_counter() - started) / 60:.1f} min; testing")
    rows = test_student(run, student, teacher)
    table = distill_table(rows)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"distill": asdict(d), "rows": rows}, indent=1) + "\n")
    log(table)
    return out


def test_student(run: TrainedRun, student: DenseSequenceModel, teacher: DenseSequenceModel) -> list[dict]:
    """The student, the teacher(s) and the run's baselines on the run's test split (full ranking)."""
    seqs, e = run.sequences, run.cfg.eval
    rows = []
    for name, model in (("student", student), ("teacher (best checkpoint)", teacher)):
        scorer = FoundationScorer(model)
        scorer.fit(seqs, "test")
        metrics = evaluate(scorer, seqs, "test", e.ks, e.batch_size, e.seed)[0]
        rows.append({"model": name, "parameters": _params(model)} | metrics)
    path = run.directory / RESULTS_JSON
    for row in json.loads(path.read_text())["models"] if path.exists() else []:
        label = "teacher (final: refitted up to the test cutoff)" if row["name"] == "recfm-FM" else row["name"]
        if row["name"] != "recfm-FM" or (run.directory / FINAL_LINK).resolve() != (
                run.directory / BEST_LINK).resolve():
            rows.append({"model": label, "parameters": None} | row["metrics"])
    return rows


def distill_table(rows: list[dict]) -> str:
    lines = ["| model | parameters | HR@10 | NDCG@10 | MRR |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {format(r['parameters'], ',') if r['parameters'] else '-'} | {r['HR@10']:.4f} | "
              f"{r['NDCG@10']:.4f} | {r['MRR']:.4f} |" for r in rows]
    student = next(r for r in rows if r["model"] == "student")
    teacher = next(r for r in rows if r["model"].startswith("teacher (best"))
    share = student["NDCG@10"] / max(teacher["NDCG@10"], 1e-12)
    return "\n".join(lines) + f"\n\nThe student keeps {share:.1%} of the teacher's test NDCG@10.\n"


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def distill_worker(config: dict) -> None:
    """Ray Train's `train_loop_per_worker`: this rank's share of the windows each epoch; rank 0 validates and
    every rank takes its stopping decision; rank 0 reports the student whenever validation improves."""
    cfg, payload, rank, world = unpack(config)
    d = cfg.distill
    torch.manual_seed(cfg.train.seed)
    teacher = DenseSequenceModel.from_spec(payload["teacher_spec"])
    teacher.load_state_dict(payload["teacher_state"])
    student = DenseSequenceModel.from_spec(payload["student_spec"])
    objective = DistillationObjective(student, teacher, d.temperature, d.hard_weight, d.repr_weight, d.candidates)
    trained = objective
    if world > 1 and dist.is_initialized():
        trained = torch.nn.parallel.DistributedDataParallel(objective)
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=d.lr,
                                  weight_decay=d.weight_decay)
    windows = payload["windows"]
    collate = TrainingCollate(student.tokenizer, student.cfg.max_len, 1)
    seqs = Sequences.load(Path(payload["prepared"])) if rank == 0 else None
    size = min(d.batch_size, windows.num_rows // world)
    steps = windows.num_rows // (world * size)  # equal on every rank: DDP's collectives must pair up
    stopping, best_state = EarlyStopping(d.patience, d.epochs, "validation NDCG@10"), None
    for epoch in range(1, d.epochs + 1):
        objective.train()
        teacher.eval()
        order = np.random.default_rng(cfg.train.seed + epoch).permutation(windows.num_rows)[rank::world]
        losses = []
        for step in range(steps):
            rows = windows.take(order[step * size:(step + 1) * size])
            batch = collate({name: rows.column(name).to_numpy(zero_copy_only=False) for name in rows.column_names})
            loss, _ = trained(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        value = torch.tensor([_validate(student, seqs, cfg) if rank == 0 else 0.0, float(np.mean(losses))],
                             dtype=torch.float64)
        if dist.is_initialized():
            dist.broadcast(value[:1], src=0)
        improved = stopping.update(float(value[0]), epoch)
        if improved:
            best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        metrics = {"val_ndcg10": float(value[0]), "epoch": epoch, "loss": float(value[1])}
        report(metrics, best_state if rank == 0 and (improved or stopping.stopped) else None, stopping.best())
        if stopping.stopped:
            break


def _validate(student: DenseSequenceModel, seqs: Sequences, cfg: RecfmConfig) -> float:
    student.eval()
    scorer = FoundationScorer(student)
    scorer.fit(seqs, "val")
    return evaluate(scorer, seqs, "val", [10], cfg.eval.batch_size, cfg.eval.seed, cfg.eval.val_targets)[0]["NDCG@10"]

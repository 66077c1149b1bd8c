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

import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from recfm.data.dataset import Sequences
from recfm.data.prepare import SEQUENCES_DIR
from recfm.platform.config import RecfmConfig
from recfm.platform.evaluation.fm_scorer import FoundationScorer
from recfm.platform.evaluation.harness import evaluate
from recfm.platform.evaluation.report import markdown, write_table
from recfm.platform.runtime import configure_process
from recfm.platform.train.data import TrainingCollate, epoch_batches, training_windows
from recfm.platform.train.launch import launch
from recfm.platform.train.loop import Job, LoopSettings
from recfm.platform.train.metrics import last_stop
from recfm.platform.train.state import read_state
from recfm.platform.trained import TrainedRun
from recfm.run.files import (
    BEST_LINK,
    DISTILL_DIR,
    FINAL_LINK,
    METRICS_FILE,
    RESULTS_JSON,
    STUDENT_FILE,
    STUDENT_SPEC,
)
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
    checkpoint = launch(cfg, run.directory, DISTILL_DIR, DistillJob,
                        {"run_dir": str(run.directory), "prepared": str(run.prepared)},
                        shared={"teacher_spec": teacher.spec(), "teacher_state": teacher.state_dict(),
                                "student_spec": student_spec, "windows": windows}, address=address)
    state = read_state(checkpoint)
    log(f"distill: best validation NDCG@10 {state.best_metric:.4f} at epoch {state.best_epoch} "
        f"({last_stop(run.directory / DISTILL_DIR / METRICS_FILE)})")
    out = run.directory / DISTILL_DIR
    out.mkdir(exist_ok=True)
    torch.save(torch.load(checkpoint / STUDENT_FILE, weights_only=True)["model"], out / STUDENT_FILE)
    (out / STUDENT_SPEC).write_text(json.dumps(student_spec, indent=1) + "\n")
    student = load_student(run.directory)
    log(f"distill: trained in {(time.perf_counter() - started) / 60:.1f} min; testing")
    rows = test_student(run, student, teacher)
    table = distill_table(rows)
    write_table(out, table, {"distill": asdict(d), "rows": rows})
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
    cells = [[r["model"], format(r["parameters"], ",") if r["parameters"] else "-",
              *(f"{r[m]:.4f}" for m in ("HR@10", "NDCG@10", "MRR"))] for r in rows]
    student = next(r for r in rows if r["model"] == "student")
    teacher = next(r for r in rows if r["model"].startswith("teacher (best"))
    share = student["NDCG@10"] / max(teacher["NDCG@10"], 1e-12)
    text = markdown(["model", "parameters", "HR@10", "NDCG@10", "MRR"], cells, "lrrrr")
    return text + f"\n\nThe student keeps {share:.1%} of the teacher's test NDCG@10.\n"


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class DistillJob(Job):
    """The student's job for the training loop: the distillation objective (DDP across workers) on this worker's
    share of the training windows each epoch; rank 0 validates and every worker gets its figure."""

    unit = "windows"

    def __init__(self, cfg: RecfmConfig, config: dict, rank: int, world: int):
        d = cfg.distill
        self.cfg, self.rank, self.world = cfg, rank, world
        torch.manual_seed(cfg.train.seed)
        self.teacher = DenseSequenceModel.from_spec(config["teacher_spec"])
        self.teacher.load_state_dict(config["teacher_state"])
        self.student = DenseSequenceModel.from_spec(config["student_spec"])
        self.objective = DistillationObjective(self.student, self.teacher, d.temperature, d.hard_weight,
                                               d.repr_weight, d.candidates)
        self.model = self.objective
        if world > 1 and dist.is_initialized():
            self.model = torch.nn.parallel.DistributedDataParallel(self.objective)
        self.optimizer = torch.optim.AdamW([p for p in self.objective.parameters() if p.requires_grad], lr=d.lr,
                                           weight_decay=d.weight_decay)
        self.windows = config["windows"]
        self.collate = TrainingCollate(self.student.tokenizer, self.student.cfg.max_len, 1)
        self.seqs = Sequences.load(Path(config["prepared"])) if rank == 0 else None
        self.size = min(d.batch_size, self.windows.num_rows // world)
        self.metrics_dir, self.metrics_file = Path(config["run_dir"]) / DISTILL_DIR, METRICS_FILE
        self.settings = LoopSettings(d.epochs, d.patience)

    def batches(self, epoch: int):
        self.objective.train()
        self.teacher.eval()
        return epoch_batches(self.windows, self.rank, self.world, self.size, self.collate, self.cfg.train.seed + epoch)

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model(batch)

    def count(self, batch) -> float:
        return float(len(batch.lengths))

    def validate(self) -> dict[str, float]:
        value = torch.tensor([_validate(self.student, self.seqs, self.cfg) if self.rank == 0 else 0.0],
                             dtype=torch.float64)
        if dist.is_initialized():
            dist.broadcast(value, src=0)
        return {"val_ndcg10": float(value[0])}

    def save(self, directory: Path, rank: int) -> None:
        if rank == 0:
            torch.save({"model": self.student.state_dict(), "optimizer": self.optimizer.state_dict()},
                       directory / STUDENT_FILE)

    def load(self, directory: Path) -> None:
        saved = torch.load(directory / STUDENT_FILE, weights_only=True)
        self.student.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])


def _validate(student: DenseSequenceModel, seqs: Sequences, cfg: RecfmConfig) -> float:
    student.eval()
    scorer = FoundationScorer(student)
    scorer.fit(seqs, "val")
    return evaluate(scorer, seqs, "val", [10], cfg.eval.batch_size, cfg.eval.seed, cfg.eval.val_targets)[0]["NDCG@10"]

"""The one Ray Train launcher: a TorchTrainer over `train.workers` workers running the training loop
(`loop.train_loop_per_worker`) for one job, its checkpoints under the run's `ray/NAME/`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from recfm.platform.config import RecfmConfig
from recfm.platform.runtime import start_ray
from recfm.platform.train.loop import JobClass
from recfm.run.files import RAY_DIR


def launch(cfg: RecfmConfig, run_dir: Path, name: str, job: JobClass, job_config: dict, *,
           shared: dict | None = None, datasets: dict | None = None, selection: str | None = "val_ndcg10",
           use_gpu: bool = False, callbacks: list | None = None, address: str | None = None) -> Path:
    """Trains a `job` (a `Job` subclass, built on every worker); returns the directory of the checkpoint with the
    best `selection` figure (None: the latest). `job_config` and `shared` reach each worker as one dict, `shared`'s
    (large) values through Ray's object store; `callbacks`: Ray Train callbacks (`recfm tune`'s report to Ray
    Tune)."""
    start_ray(cfg.train, address)
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from recfm.platform.train.loop import train_loop_per_worker

    t = cfg.train
    kept = (ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=selection,
                                       checkpoint_score_order="max")
            if selection else ray.train.CheckpointConfig(num_to_keep=1))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": asdict(cfg), "job_class": job,
                           "job": job_config | {k: ray.put(v) for k, v in (shared or {}).items()}},
        scaling_config=ray.train.ScalingConfig(num_workers=t.workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=name, storage_path=str(Path(run_dir) / RAY_DIR), checkpoint_config=kept,
                                       failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
                                       callbacks=callbacks),
        datasets=datasets,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"))
    result = trainer.fit()
    if selection is None:
        if result.checkpoint is None:
            raise RuntimeError(f"{Path(result.path).name} reported no checkpoint")
        return Path(result.checkpoint.path)
    best = max(result.best_checkpoints or [], key=lambda cm: cm[1].get(selection, -1.0), default=None)
    if best is None:
        raise RuntimeError(f"{Path(result.path).name} reported no checkpoint")
    return Path(best[0].path)

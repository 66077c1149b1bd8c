"""Ray Train for the small models trained after the FM (the heads, the distilled student): the payload sits in
Ray's object store, every worker runs DDP over gloo, and rank 0 reports the best weights so far with a
`best.json` (value, epoch, why training stopped)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from recfm.platform.config import RecfmConfig, config_from_dict
from recfm.platform.runtime import configure_process

WEIGHTS_FILE = "weights.pt"
BEST_FILE = "best.json"


def fit_on_ray(cfg: RecfmConfig, run_dir: Path, name: str, worker: Callable[[dict], None], payload: dict,
               address: str | None) -> tuple[dict, dict]:
    """Runs `worker` (a `train_loop_per_worker` taking `unpack(config)`) on `cfg.train.workers`; returns the best
    weights and their `best.json`."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from recfm.platform.runtime import start_ray
    from recfm.run.files import RAY_DIR

    start_ray(cfg.train, address)
    t = cfg.train
    trainer = TorchTrainer(
        worker, train_loop_config={"cfg": asdict(cfg), "payload": ray.put(payload)},
        scaling_config=ray.train.ScalingConfig(num_workers=t.workers, use_gpu=False,
                                               resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=name, storage_path=str(Path(run_dir) / RAY_DIR),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)),
        torch_config=TorchConfig(backend="gloo"))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{name} training reported no checkpoint")
    with result.checkpoint.as_directory() as directory:
        best = json.loads((Path(directory) / BEST_FILE).read_text())
        return torch.load(Path(directory) / WEIGHTS_FILE, weights_only=True), best


def unpack(config: dict) -> tuple[RecfmConfig, dict, int, int]:
    """In a worker: the config, the payload, this rank and the world size."""
    import ray
    import ray.train

    configure_process(threads=1, steady_heap=True)
    payload = config["payload"]
    if isinstance(payload, ray.ObjectRef):
        payload = ray.get(payload)
    ctx = ray.train.get_context()
    return config_from_dict(config["cfg"]), payload, ctx.get_world_rank(), ctx.get_world_size()


def report(metrics: dict, state: dict | None, best: dict | None) -> None:
    """Every rank, every epoch: `state` (rank 0's best weights) is reported as a checkpoint when given."""
    import ray.train

    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, Path(directory) / WEIGHTS_FILE)
        (Path(directory) / BEST_FILE).write_text(json.dumps(best))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


@dataclass
class EarlyStopping:
    """The best figure so far, and whether to stop: after `patience` epochs without a better one, or `epochs`."""

    patience: int
    epochs: int
    figure: str  # what is compared, for the reason given
    value: float = -float("inf")
    epoch: int = 0
    stale: int = 0
    stopped: str = ""

    def update(self, value: float, epoch: int) -> bool:
        """Records epoch `epoch`'s figure; True when it is the best so far."""
        improved = value > self.value
        if improved:
            self.value, self.epoch, self.stale = value, epoch, 0
        else:
            self.stale += 1
        if self.stale >= self.patience:
            self.stopped = f"no better {self.figure} for {self.patience} epochs"
        elif epoch >= self.epochs:
            self.stopped = f"all {self.epochs} epochs done"
        return improved

    def best(self) -> dict:
        return {"value": self.value, "epoch": self.epoch, "stopped": self.stopped}

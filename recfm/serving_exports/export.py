"""`recfm export RUN`: a directory a server can load without recfm.

    model.pt2              torch.export program of `ServingModel` (raw event columns -> scores, user vector)
    model.onnx             the same graph for onnxruntime
    manifest.json          what it is (model, run, created, config hash), its inputs and outputs with dtypes and
                           shapes, vocabulary sizes, embedding dimension, metrics at export time, parity figures
    id_maps.json           dense index -> source id, for items and users; each categorical facet's codes
    item_embeddings.npy    float32 [items, dim], row i = dense item i

The export checks itself before it is written out as done: on up to `parity_requests` user histories, the
model as recfm evaluates it (TorchRec tables for a teacher), the exported module in eager mode, the `.pt2`
program and onnxruntime must agree within `tolerance` (fp32), or the export fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from recfm.fm.batching import inference_batch, rows_from_arrays
from recfm.fm.load import foundation_model
from recfm.run.files import EXPORT_DIR, MANIFEST
from recfm.run.run import Run
from recfm.serving_exports.dense import DenseSequenceModel
from recfm.serving_exports.embeddings import data_cutoff
from recfm.serving_exports.serving import ServingModel, input_names, per_user, serving_inputs
from recfm.serving_exports.student import load_student

FORMAT_VERSION = 1
OUTPUTS = ["scores", "user"]


class ExportError(ValueError):
    """The export could not be made or failed its own checks; the message says which and why."""


def export_run(run: Run, model: DenseSequenceModel, reference, kind: str, out: Path, metrics: dict,
               parity_requests: int = 1000, tolerance: float = 1e-4, log=print) -> dict:
    """Exports `model` (built from `run`) into `out`; `reference` scores a `SequenceBatch` the way recfm
    evaluates this model (the TorchRec FM for a teacher). Returns the manifest."""
    seqs = run.sequences
    model = model.eval()
    serving = ServingModel(model).eval()
    names = input_names(model)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    users, known = _parity_requests(seqs.offsets, parity_requests, run.config["eval"]["seed"])
    example = _tensors(serving_inputs(names, seqs.offsets, seqs.events, users[:8], known[:8], model.cfg.max_len))
    started = time.perf_counter()
    write_programs(serving, tuple(example[n] for n in names), model.cfg.max_len, tmp)
    log(f"export: traced and written in {time.perf_counter() - started:.1f} s; checking parity on "
        f"{len(users):,} user histories")

    parity = check_parity(tmp, serving, reference, run, names, users, known, model.cfg.max_len)
    worst = max(parity.values())
    if not worst <= tolerance:
        raise ExportError(f"exported scores differ from eager by up to {worst:.3g} (> {tolerance:g}): {parity}")

    item_table = model.item_table().detach().float().numpy()
    np.save(tmp / "item_embeddings.npy", item_table)
    (tmp / "id_maps.json").write_text(json.dumps({
        "item": [str(i) for i in run.catalog.item_ids], "user": list(run.users),
        "vocab": {k: [str(c) for c in v] for k, v in seqs.vocab.items()}}) + "\n")
    manifest = {
        "format_version": FORMAT_VERSION, "model": kind, "run_id": run.directory.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_sha256": hashlib.sha256((run.directory / "config.yaml").read_bytes()).hexdigest(),
        "files": {"torch_export": "model.pt2", "onnx": "model.onnx", "item_embeddings": "item_embeddings.npy",
                  "id_maps": "id_maps.json"},
        "inputs": [_input_spec(n) for n in names], "outputs": [
            {"name": "scores", "dtype": "float32", "shape": ["batch", "items"]},
            {"name": "user", "dtype": "float32", "shape": ["batch", "dim"]}],
        "max_events": model.cfg.max_len, "embedding_dim": model.cfg.dim, "items": int(item_table.shape[0]),
        "vocab_sizes": {f.name: f.size for f in model.tokenizer.facets},
        "tokenizer": {"gap_buckets": model.tokenizer.gap_buckets, "value_edges": model.tokenizer.value_edges},
        "context": model.tokenizer.context_names,  # request_* inputs: -1 = not known (the average context)
        "data_cutoff": data_cutoff(seqs), "metrics": metrics,
        "parity": {"requests": len(users), "max_abs_diff": parity, "tolerance": tolerance},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # a reader sees a whole export or none
    return manifest


def write_programs(serving: ServingModel, example: tuple[torch.Tensor, ...], max_len: int, directory: Path) -> None:
    """`model.pt2` and `model.onnx` in `directory`, dynamic in batch size and history length (1..max_len); the ONNX
    model is converted from the same exported program (one trace, not two)."""
    dynamic = _dynamic_shapes(serving.names, max_len)
    with torch.no_grad():
        program = torch.export.export(serving, example, dynamic_shapes=dynamic)
    torch.export.save(program, directory / "model.pt2")
    # the exporter's notes are about torch's own internals (torchvision's ops it skips, its renamed axes), not
    # this model: the parity check below is what says the program is right
    onnx_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
            warnings.filterwarnings("ignore", category=FutureWarning)
            onnx_program = torch.onnx.export(program, example, dynamic_shapes=dynamic, input_names=serving.names,
                                             output_names=OUTPUTS, dynamo=True, verbose=False)
    finally:
        onnx_log.setLevel(level)
    onnx_program.save(str(directory / "model.onnx"))


def check_parity(directory: Path, serving: ServingModel, reference, run: Run, names: list[str],
                 users: np.ndarray, known: np.ndarray, max_len: int, batch: int = 250) -> dict[str, float]:
    """Max |difference| of each path's scores from `reference` (recfm's own evaluation path)."""
    import onnxruntime as ort

    seqs = run.sequences
    program = torch.export.load(str(directory / "model.pt2")).module()
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    worst = {"eager": 0.0, "torch_export": 0.0, "onnxruntime": 0.0}
    tokenizer = serving.model.tokenizer
    for s in range(0, len(users), batch):
        u, k = users[s:s + batch], known[s:s + batch]
        # each request in the context of the user's next event, where there is one (not known where not)
        arrays = serving_inputs(names, seqs.offsets, seqs.events, u, k, max_len, next_context=True)
        tensors = _tensors(arrays)
        with torch.no_grad():
            expected = reference(inference_batch(rows_from_arrays(seqs.offsets, seqs.events, u), k, tokenizer,
                                                 max_len, next_context=True))
            got = {"eager": serving(*(tensors[n] for n in names))[0],
                   "torch_export": program(*(tensors[n] for n in names))[0],
                   "onnxruntime": torch.from_numpy(session.run(["scores"], arrays)[0])}
        for path, scores in got.items():
            worst[path] = max(worst[path], float((scores - expected).abs().max()))
    return worst


def _parity_requests(offsets: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` (user, history length) pairs: every user with history, then more prefixes of theirs if needed."""
    lengths = np.diff(offsets)
    users = np.flatnonzero(lengths > 0)
    rng = np.random.default_rng(seed)
    picked = rng.choice(users, n, replace=len(users) < n)
    known = np.where(np.arange(n) < len(users), lengths[picked], 1 + rng.integers(0, lengths[picked]))
    return picked.astype(np.int64), known.astype(np.int64)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(a) for n, a in arrays.items()}


def _dynamic_shapes(names: list[str], max_len: int) -> tuple:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    events = torch.export.Dim("events", min=1, max=max_len)
    # one entry: `ServingModel.forward` takes its columns as *args
    return (tuple({0: batch} if per_user(n) else {0: batch, 1: events} for n in names),)


def _input_spec(name: str) -> dict:
    return {"name": name, "dtype": "float32" if name == "value" else "int64",
            "shape": ["batch"] if per_user(name) else ["batch", "events"]}


def export_trained(run_dir: Path, kind: str = "student", out: Path | None = None, log=print) -> dict:
    """`recfm export`: the run's distilled student, or its teacher (the final FM, gathered from its shards into
    one process), into `out` (default: RUN/export/<kind>)."""
    from recfm.run.files import DISTILL_DIR, RESULTS_JSON

    run = Run.open(run_dir)
    if kind == "teacher":
        try:
            fm = foundation_model(run)
        except Exception as err:  # a truncated or foreign checkpoint: say which, not a DCP traceback
            raise ExportError(f"cannot load the FM checkpoint of {run.directory}: {err}") from None
        model, reference = DenseSequenceModel.from_foundation(fm), fm.score_items
        results = run.directory / RESULTS_JSON
        rows = json.loads(results.read_text())["models"] if results.exists() else []
        metrics = next((r["metrics"] for r in rows if r["name"] == "recfm-FM"), {})
    elif kind == "student":
        model = load_student(run.directory)
        reference = model.score_items  # recfm's own (jagged, tokenizer) path; the export tokenizes in-graph
        results = run.directory / DISTILL_DIR / "results.json"
        rows = json.loads(results.read_text())["rows"] if results.exists() else []
        metrics = next(({k: v for k, v in r.items() if k not in ("model", "parameters")} for r in rows
                        if r["model"] == "student"), {})
    else:
        raise ValueError(f"export: model must be student or teacher, not {kind!r}")
    out = Path(out) if out else run.directory / EXPORT_DIR / kind
    manifest = export_run(run, model, reference, kind, out, metrics, log=log)
    log(f"export: {kind} of {run.directory.name} written to {out}; parity on {manifest['parity']['requests']:,} "
        f"histories, max |difference| " + ", ".join(f"{k} {v:.2g}" for k, v in
                                                     manifest["parity"]["max_abs_diff"].items()))
    return manifest


def read_manifest(directory: Path) -> dict:
    """An export's manifest, checked: present, of a format this code reads, and naming files that exist."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a recfm export (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{path} is not valid JSON: {err}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path} has format_version {manifest.get('format_version')!r}; this recfm reads "
                          f"{FORMAT_VERSION}: export the run again")
    missing = [f for f in manifest.get("files", {}).values() if not (Path(directory) / f).exists()]
    if missing:
        raise ExportError(f"{directory} lacks {', '.join(missing)}, which its manifest names")
    return manifest

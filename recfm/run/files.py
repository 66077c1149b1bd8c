"""Every name in a run directory, in one place: the stages write these and every consumer reads them.

    runs/<name>-<time>/
        config.yaml            the resolved config                 model.json       what rebuilds the FM
        data/                  the prepared data it was trained on (histories, catalog, ids, content vectors)
        item_prob.npy          item frequencies (logQ)             item_content.npz its content path's arrays
        ray/train/, ray/cooldown/, ray/refit/   Ray Train's runs (checkpoints); best_checkpoint, final_checkpoint
        metrics.jsonl, cooldown_metrics.jsonl, refit_metrics.jsonl, tb/   the training curves
        results.md, results.json                                   the test table
        test_ranks.npz         every row's rank of each test target, and the request's user (paired comparisons)
        heads/   heads.pt, heads.json, signals.npz, test_ranks.npz, results.*, metrics.jsonl, tb/
        distill/ student.pt, student.json, results.*, metrics.jsonl, tb/
        export/<kind>/  manifest.json and the files
"""

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.txt"  # every line the pipeline's stages wrote
DATA_DIR = "data"  # the prepared data the run was trained on (hard links where it can): a run serves without .cache/
MODEL_FILE = "model.json"
ITEM_PROB_FILE = "item_prob.npy"
ITEM_CONTENT_FILE = "item_content.npz"  # model.content: text vectors, semantic-ID centroids, which items have IDs
RAY_DIR = "ray"  # Ray Train's runs: ray/train, ray/cooldown, ray/refit, ray/heads, ray/distill
RAY_RUN_NAME = "train"
REFIT_RUN_NAME = "refit"
COOLDOWN_RUN_NAME = "cooldown"
BEST_LINK = "best_checkpoint"  # best on validation (trained on events before the validation cutoff)
FINAL_LINK = "final_checkpoint"  # what is tested and served: the best one, refitted up to the test cutoff
STATE_FILE = "train_state.json"  # in a checkpoint: epoch, step, early-stopping state
TB_DIR = "tb"
METRICS_FILE = "metrics.jsonl"
REFIT_METRICS_FILE = "refit_metrics.jsonl"
COOLDOWN_METRICS_FILE = "cooldown_metrics.jsonl"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
TEST_RANKS_FILE = "test_ranks.npz"  # "users" (one per test request), then one array of ranks per table row

HEADS_DIR = "heads"
HEADS_WEIGHTS_FILE = "heads.pt"
HEADS_SPEC_FILE = "heads.json"
HEADS_SIGNALS_FILE = "signals.npz"
HEADS_RANKS_FILE = "test_ranks.npz"

DISTILL_DIR = "distill"
STUDENT_FILE = "student.pt"
STUDENT_SPEC = "student.json"

EXPORT_DIR = "export"
MANIFEST = "manifest.json"

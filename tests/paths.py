"""Where the tests find the project and the shared data, wherever in tests/ a test file lives."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DOCS = ROOT / "docs"
SHARED_DATA = ROOT.parent / "shared" / "data"
BEAUTY = SHARED_DATA / "amazon-beauty" / "Beauty.txt.gz"

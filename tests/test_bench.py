"""The hand-run benchmarks' tables stay in step with the code they name."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_mutation_of_the_check_applies_to_the_code():
    spec = importlib.util.spec_from_file_location("mutate", ROOT / "bench" / "mutate.py")
    mutate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mutate)
    stale = {m.name: mutate.problems(m) for m in mutate.MUTATIONS if mutate.problems(m)}
    assert not stale

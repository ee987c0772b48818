"""Suite-wide settings: the ``slow`` marker.

``pytest -m "not slow"`` runs the quick subset; the README's ``pytest`` (and CI) runs everything. A test is slow when
it took over ~10 s on 2 CPU cores (``pytest --durations=25``, 2026-12-02), or when it uses a fixture that does
(``SLOW_FIXTURES``: the whole demo runs once for tests/test_cli.py). Re-measure and extend the lists when adding
multi-process or end-to-end tests; other test files need no marker of their own.
"""
import pytest

# node ids (a parametrized test by its name without the [...] part), measured on 2 cores, slowest first
SLOW_TESTS = {
    "tests/test_trainer.py::test_torchrun_two_gloo_processes_train",  # ~37 s: torchrun, 2 gloo processes
    "tests/test_trainer.py::test_resume_after_sigkill",  # ~26 s: a training process killed and resumed
    "tests/test_distill.py::test_cli_distill_and_torchrun",  # ~25 s: distill CLI, then under torchrun
    "tests/test_cli.py::test_predict_profile_export_models",  # ~14 s (plus the demo fixture)
    "tests/test_distributed_eval.py::test_two_process_gloo_eval_equals_single_process",  # ~10 s: 2 gloo processes
}
# fixtures that cost over ~10 s themselves: every test using one is slow
SLOW_FIXTURES = {
    "demo_dir": "runs `segdistill demo` (~43 s)",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("[")[0] in SLOW_TESTS or SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

"""Test set-up: float64 on, strict dtype promotion, the golden cases of the C program, and a
cache of compiled programs that belongs to the test run.

x64 and strict promotion are switched on here, once, for every test module. Rank promotion
stays at NumPy's rules: the kernels are written for one element and broadcast over leading axes
(pixels, layers, sub-pixels, sources, φ, mosaic) by design.

Markers (pyproject.toml): ``golden`` (every golden case of the C program) and ``slow`` (tens of
seconds or more each); ``python -m pytest -m "not golden and not slow"`` is the fast subset.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from jaxdiff import aot

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"
INPUTS = GOLDEN / "inputs"


def golden_cases() -> list[str]:
    """Names of every golden case, in cases.json order."""
    return [c["name"] for c in json.loads((GOLDEN / "cases.json").read_text())["cases"]]


def golden_cmd(name: str) -> dict:
    """The case's cmd.json: argv as run, and the C variant (spec or c-parity)."""
    return json.loads((GOLDEN / name / "cmd.json").read_text())


def golden_argv(name: str) -> list[str]:
    """The case's command line for jaxdiff: the C program's argv and its φ carryover mode."""
    cmd = golden_cmd(name)
    return [*cmd["argv"], "--phi-carryover-mode", cmd["variant"]]


# Tests of several seconds or more each on two cores (large compiles, reverse mode, finite
# differences, subprocesses, dxtbx): marked ``slow`` here, by module or by test function, so that
# ``-m "not golden and not slow"`` runs in about a minute. A name here that no longer exists in
# its module stops the run.
SLOW_MODULES = {
    "test_aot.py",
    "test_batch.py",
    "test_batch_processes.py",
    "test_dials.py",
    "test_multipanel.py",
    "test_nxmx.py",
    "test_refine_cli.py",
    "test_trace_compare.py",
}
SLOW_TESTS = {
    "test_cli_frames.py": {
        "test_supervisor_command_writes_a_readable_smv",
        "test_commands_run_as_the_program_match_single_runs",
    },
    "test_cli_fuzz.py": {"test_any_command_line_exits_0_or_2_cleanly"},
    "test_cli_io.py": {
        "test_flags_override_the_header_and_mask_zeros_are_skipped",
        "test_hdf5_round_trip_renders_the_same_image",
        "test_hdf5_stack_holds_several_images",
        "test_img_header_sets_the_geometry",
        "test_run_summary_matches_the_c_program",
    },
    "test_grad.py": {
        "test_grad_over_the_whole_experiment",
        "test_group_gradient_matches_finite_differences",
    },
    "test_grad_kernels.py": {
        "test_rotation_vector_matrix_at_zero_and_across_its_branch",
        "test_safe_unit_and_polarization_are_finite_along_the_beam",
    },
    "test_grad_singular.py": {
        "test_derivatives_at_a_bragg_peak_are_exact",
        "test_gradients_at_the_singular_point_match_finite_differences",
        "test_no_nan_or_inf_in_gradient_images_over_orientations",
        "test_the_construction_puts_the_pixels_on_their_peaks",
    },
    "test_models.py": {
        "test_mask_is_float_and_the_gradient_over_a_whole_experiment_is_finite",
        "test_python_models_render_the_flag_image",
        "test_the_command_writes_the_structure_factor_cache",
    },
    "test_refine.py": {
        "test_a_fit_started_far_off_is_judged_not_converged",
        "test_search_brings_a_start_3_degrees_off_into_the_basin",
        "test_changing_values_does_not_recompile",
        "test_mosaic_spread_is_fitted_where_the_model_has_domains",
        "test_sweep_refinement_recovers_one_shared_orientation",
        "test_images_mapped_over_equal_those_rendered_one_by_one",
        "test_loss_gradient_for_every_group_matches_finite_differences",
        "test_poisson_nll_is_the_likelihood_up_to_a_constant",
        "test_refine_recovers_the_orientation",
        "test_two_images_share_the_cell_and_ncells_and_keep_their_orientations",
    },
    "test_simulate.py": {
        "test_c_parity_first_pixel_is_fresh_and_the_rest_stale",
        "test_chunking_does_not_change_the_image",
        "test_float32_close_to_float64",
        "test_modes_agree_without_a_phi_step_at_zero",
        "test_roi_renders_only_its_pixels_and_matches_the_full_frame",
    },
    "test_trace.py": {
        "test_cli_trace_prints_the_pixel_and_leaves_the_image_alone",
        "test_float32_trace_is_the_float32_image",
        "test_gradient_of_F_latt_wrt_rotation",
        "test_gradient_of_pixel_wrt_distance",
        "test_other_pixels_and_values_do_not_recompile",
        "test_parity_example_runs",
        "test_pixel_outside_the_roi_prints_set_up_only",
        "test_trace_value_is_the_simulated_pixel",
        "test_tricubic_switch_off_pixel",
    },
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark the slow tests (before -m and -k select)."""
    found = set()
    for item in items:
        module, name = item.path.name, getattr(item, "originalname", item.name)
        if module in SLOW_MODULES or name in SLOW_TESTS.get(module, ()):
            item.add_marker(pytest.mark.slow)
            found.add((module, name))
    modules = {item.path.name for item in items}
    listed = {(m, n) for m, names in SLOW_TESTS.items() if m in modules for n in names}
    if listed - found:
        raise pytest.UsageError(f"conftest.SLOW_TESTS names no test: {sorted(listed - found)}")


@pytest.fixture(scope="session", autouse=True)
def _cache_of_this_run(tmp_path_factory):
    """Compiled programs go to a folder of this test run (for in-process CLI calls and the
    commands tests start), never to the user's ~/.cache/jaxdiff."""
    patch = pytest.MonkeyPatch()
    patch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path_factory.mktemp("jaxdiff-cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _caches_off_after_each_test():
    """A command-line entry point called in-process turns the caches on for its process;
    every test starts with them off, whatever ran before it."""
    yield
    aot.disable()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory where inputs/NAME resolves to the golden inputs.

    The C program and the jaxdiff command write Fdump.bin into the working directory when -hkl
    is given and read it back when -hkl is absent, so each run gets its own folder, never the
    golden one.
    """
    (tmp_path / "inputs").symlink_to(INPUTS)
    monkeypatch.chdir(tmp_path)
    return tmp_path

"""Seed 000's flags on ``lowbit quantize`` / ``lowbit eval``: every invalid combination exits
with status 2 and one line saying why and what to do, before any model is loaded."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

if str(Path(__file__).resolve().parent) not in sys.path:  # for fixtures_models and its SPECs
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_models import assert_one_line_error, cli_env, run_cli  # noqa: E402,F401

from lowbit.cli import examples  # noqa: E402
from lowbit.cli.flags import (QUANT_BACKENDS, FlagError, check_flags, recipe_from_args,  # noqa: E402
                              with_calib_method)
from lowbit.errors import ConfigError  # noqa: E402
from lowbit.presets import preset  # noqa: E402
from lowbit.types import Scheme  # noqa: E402


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the command gets as far as loading a model: flags are checked first."""
    def refuse(spec):
        raise AssertionError(f"load_example({spec!r}) ran although the flags are invalid")

    monkeypatch.setattr(examples, "load_example", refuse)


def _args(**given) -> argparse.Namespace:
    values = dict(q_proj=False, q_head=False, q_block_linear=False, quantize_all=False,
                  quant_backend="python", quant_bits=None, quant_mode="dynamic",
                  calib_method=None, quant_calib_batches=None, recipe=None)
    values.update(given)
    return argparse.Namespace(**values)


QUANTIZE_ERRORS = [
    # (extra flags, text the one line must name)
    (["--recipe", "w8a8", "--q_proj"], "--recipe"),
    (["--quantize_all", "--quant_mode", "fixed88", "--quant_bits", "8"], "--quant_bits=8"),
    (["--quantize_all", "--quant_mode", "fixed88", "--calib_method", "mse"], "1/256"),
    (["--quantize_all", "--quant_bits", "40"], "--quant_bits=40"),
    (["--quant_bits", "40"], "[2, 16]"),
    (["--quantize_all", "--quant_bits", "1"], "--quant_bits=1"),
    (["--quantize_all", "--calib_method", "median"], "--calib_method='median'"),
    (["--quantize_all", "--calib_method", "percentile:150"], "percentile"),
    (["--quant_bits", "4"], "--quantize_all"),
    (["--recipe", "w8a8", "--quant_bits", "4"], "--quant_bits=4"),
    (["--quant_mode", "fixed88"], "--quant_mode='fixed88'"),
    (["--quantize_all", "--quant_calib_batches", "-1"], "--quant_calib_batches=-1"),
    (["--recipe", "w9a9"], "w9a9"),
    (["--recipe", "no_such_recipe.json"], "no_such_recipe.json"),
]


@pytest.mark.parametrize("flags,needle", QUANTIZE_ERRORS,
                         ids=[" ".join(f) for f, _ in QUANTIZE_ERRORS])
def test_invalid_quantize_flags_exit_2_with_one_line(flags, needle, tmp_path, capsys,
                                                     no_model_load, cli_env):
    code, out, err = run_cli(capsys, "quantize", "--model", "digits", "--out_dir", tmp_path,
                             *flags)
    assert_one_line_error(code, err, needle)
    assert not any(tmp_path.iterdir()), "nothing is written when the flags are refused"


EVAL_ERRORS = [
    (["--calib_method", "mse"], "--quant_calib_batches"),
    (["--quant_calib_batches", "2", "--quant_bits", "4"], "--quant_bits=4"),
    (["--q_head", "--quant_calib_batches", "-3"], "--quant_calib_batches=-3"),
    (["--q_head", "--calib_method", "p1000"], "--calib_method='p1000'"),
]


@pytest.mark.parametrize("flags,needle", EVAL_ERRORS, ids=[" ".join(f) for f, _ in EVAL_ERRORS])
def test_invalid_eval_flags_exit_2_with_one_line(flags, needle, tmp_path, capsys, no_model_load,
                                                 cli_env):
    code, _, err = run_cli(capsys, "eval", "--ckpt", tmp_path / "ckpt", "--model", "digits",
                           "--out_dir", tmp_path / "out", *flags)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("spec,needle", [
    ("resnet", "--model='resnet'"),
    ("no_such_module_xyz:build", "no_such_module_xyz"),
    ("fixtures_models:no_such_function", "no_such_function"),
    ("fixtures_models:not_a_model", "fixtures_models:not_a_model"),
    ("hf:/no/such/folder", "hf:/no/such/folder"),
])
def test_unknown_model_spec_exits_2_with_one_line(spec, needle, tmp_path, capsys, cli_env):
    code, _, err = run_cli(capsys, "quantize", "--model", spec, "--recipe", "w8a16",
                           "--out_dir", tmp_path)
    assert_one_line_error(code, err, "--model", needle)


@pytest.mark.parametrize("flag,value", [("--quant_mode", "fixed99"), ("--quant_backend", "cuda"),
                                        ("--quant_bits", "eight")])
def test_argparse_rejects_bad_choices_with_status_2(flag, value, tmp_path, capsys):
    code, _, err = run_cli(capsys, "quantize", "--model", "digits", "--out_dir", tmp_path,
                           flag, value)
    assert code == 2, "argparse usage errors exit with status 2"
    assert flag in err and value in err, err


def test_check_flags_accepts_the_documented_combinations():
    check_flags(_args(quantize_all=True, quant_bits=4, calib_method="p99"))
    check_flags(_args(q_head=True, quant_mode="fixed88", quant_bits=16))
    check_flags(_args(recipe="w8a8-static", calib_method="mse"))  # sets the recipe's act method
    check_flags(_args(quant_calib_batches=0))                     # no calibration at all
    check_flags(_args(quant_calib_batches=2, calib_method="kl"), "eval")
    with pytest.raises(FlagError, match=r"--calib_method='kl'.*--quant_calib_batches"):
        check_flags(_args(calib_method="kl"), "eval")


def test_flag_error_is_a_config_error_naming_field_value_and_fix():
    with pytest.raises(ConfigError, match=r"--quant_bits=17 is invalid: allowed an integer in "
                                          r"\[2, 16\]\. Fix: e\.g\. --quant_bits 8"):
        check_flags(_args(quantize_all=True, quant_bits=17))


def test_role_flags_build_the_recipe_they_describe():
    recipe = recipe_from_args(_args(q_head=True, quant_bits=6, calib_method="p99"))
    configs = {rule.selector.role: rule.config for rule in recipe.rules}
    assert configs["proj"] is None and configs["block"] is None, "only --q_head is chosen"
    assert configs["head"].weight.qtype.bits == 6 and configs["head"].act.qtype.bits == 6
    assert configs["head"].act.method == "percentile:99", "--calib_method sets the act method"
    assert QUANT_BACKENDS == {"python": "reference", "cpp": "fused"}


def test_with_calib_method_changes_only_calibrated_activations():
    static = with_calib_method(preset("w8a8-static"), "kl")
    for old, new in zip(preset("w8a8-static").rules, static.rules):
        if new.config is None:
            continue
        assert new.config.weight == old.config.weight, "weights keep their method"
        if old.config.act is not None:
            assert new.config.act == old.config.act.replace(method="entropy"), \
                "the calibrated activation gets the method (kl is entropy), nothing else changes"
    assert static.name == "w8a8-static+entropy"


@pytest.mark.parametrize("name", ["w8a8", "w8a16", "int16-fixed88"])
def test_with_calib_method_refuses_recipes_without_calibrated_activations(name):
    recipe = preset(name)
    assert all(r.config is None or r.config.act is None or r.config.act.dynamic
               or r.config.act.scheme is Scheme.FIXED_POINT for r in recipe.rules)
    with pytest.raises(FlagError, match=rf"--calib_method='mse'.*recipe '{name}' has no "
                                        r"calibrated activations"):
        with_calib_method(recipe, "mse")

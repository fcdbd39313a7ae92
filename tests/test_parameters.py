"""CKKS parameters are refused at the edge, before any silo starts or anything is encrypted."""

import warnings
from dataclasses import replace

import pytest

from conf import load_config
from crypto import CkksKit, CKKSParams, InsecureParametersError, InsecureParametersWarning
from simulations.run_local import check_silos, main


def test_insecure_parameters_are_refused_from_the_config():
    cfg = load_config(["he.coeff_mod_bit_sizes=[60,60,60,60]"])  # 240 bits > 218 at N=8192
    with pytest.raises(InsecureParametersError, match="below 128-bit"):
        check_silos(cfg)


def test_allow_insecure_is_loud(capsys):
    cfg = load_config(["he.coeff_mod_bit_sizes=[60,60,60,60]", "he.allow_insecure=true"])
    with pytest.warns(InsecureParametersWarning, match="INSECURE"):
        check_silos(cfg)
    assert "BELOW 128-bit" in capsys.readouterr().err
    with pytest.warns(InsecureParametersWarning):
        CkksKit.generate(CKKSParams.from_config(cfg.he))


def test_secure_parameters_are_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_silos(load_config([]))
    params = CKKSParams.from_config(load_config([]).he)
    assert params.is_secure and not replace(params, coeff_mod_bit_sizes=(60, 60, 60, 60)).is_secure


@pytest.mark.parametrize("override", [
    "he.input_scale_bits=110",  # 110 + 16 weight bits + the logit bound > the 120-bit query level
    "he.coeff_mod_bit_sizes=[30,30,30,60]",  # a query level too small to hold a product
    "he.max_abs_input=1e12",  # a bound the chain cannot hold
])
def test_a_chain_that_cannot_hold_the_computation_is_refused_before_anything_runs(override, capsys):
    with pytest.raises(InsecureParametersError):
        check_silos(load_config([override]))
    assert main([override]) == 2  # the CLI stops before starting any worker
    assert "error:" in capsys.readouterr().err

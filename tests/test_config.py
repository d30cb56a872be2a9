"""QuantSpec / LayerConfig: validation, dict round trips, versions, calibration-method strings."""

from __future__ import annotations

import itertools
import json

import pytest

from lowbit import config
from lowbit.config import (CALIB_METHODS, CONFIG_VERSION, LayerConfig, QuantSpec,
                           normalize_method, parse_method, weight_spec)
from lowbit.errors import ConfigError
from lowbit.types import PerChannel, PerGroup, PerTensor, PerToken, Scheme, int4, int8, int16, uint8

# ----------------------------------------------------------------------------- methods


@pytest.mark.parametrize("name", CALIB_METHODS)
def test_canonical_method_names_parse_to_themselves(name):
    parsed = parse_method(name)
    if name == "percentile":
        assert parsed == ("percentile", {"p": config.DEFAULT_PERCENTILE})
    else:
        assert parsed == (name, {})
    assert parse_method(f"  {name.upper()} ")[0] == name, "case and spaces are forgiven"


@pytest.mark.parametrize("alias,expected", [
    ("maxabs", ("minmax", {})), ("max_abs", ("minmax", {})), ("absmax", ("minmax", {})),
    ("kl", ("entropy", {})), ("KL", ("entropy", {})),
    ("ema", ("moving_average", {})), ("moving_average_minmax", ("moving_average", {})),
    ("p99", ("percentile", {"p": 99.0})), ("p999", ("percentile", {"p": 99.9})),
    ("p9999", ("percentile", {"p": 99.99})),
    ("percentile:99.9", ("percentile", {"p": 99.9})),
    ("percentile:100", ("percentile", {"p": 100.0})),
    ("percentile:0.5", ("percentile", {"p": 0.5})), ("percentile:", ("percentile", {"p": 99.99})),
])
def test_aliases_and_parameters(alias, expected):
    assert parse_method(alias) == expected


@pytest.mark.parametrize("text,canonical", [
    ("maxabs", "minmax"), ("kl", "entropy"), ("ema", "moving_average"), ("p99", "percentile:99"),
    ("p999", "percentile:99.9"), ("percentile", "percentile:99.99"), ("mse", "mse"),
    ("percentile:99.90", "percentile:99.9"), ("auto", "auto"),
])
def test_normalize_method_has_one_spelling_per_method(text, canonical):
    assert normalize_method(text) == canonical
    assert normalize_method(canonical) == canonical, "normalizing is idempotent"
    assert parse_method(canonical) == parse_method(text)


@pytest.mark.parametrize("bad,match", [
    (None, r"method=None is invalid: allowed a string: one of \('minmax'.*'percentile:P'"),
    (99, r"method=99 is invalid: allowed a string"),
    ("max", r"method='max' is invalid: allowed one of \(.*'maxabs'.*\) or 'percentile:P'\. "
            r"Fix: e.g. 'minmax', 'p99'"),
    ("", r"method='' is invalid: allowed one of"),
    ("p95", r"method='p95' is invalid: allowed one of"),
    ("percentile:0", r"method='percentile:0' is invalid: allowed 'percentile:P' with 0 < P <= 100"),
    ("percentile:100.5", r"allowed 'percentile:P' with 0 < P <= 100"),
    ("percentile:-1", r"allowed 'percentile:P' with 0 < P <= 100"),
    ("percentile:abc", r"method='percentile:abc' is invalid: allowed 'percentile:P'"),
    ("percentile:nan", r"allowed 'percentile:P' with 0 < P <= 100"),
    ("minmax:3", r"method='minmax:3' is invalid: allowed 'minmax' takes no ':' parameter\. "
                 r"Fix: write just 'minmax'"),
    ("kl:2", r"allowed 'entropy' takes no ':' parameter"),
])
def test_bad_methods_raise(bad, match):
    with pytest.raises(ConfigError, match=match):
        parse_method(bad)


# --------------------------------------------------------------------------- QuantSpec

SPECS = [
    QuantSpec(),
    QuantSpec(qtype=int4, granularity=PerGroup(128, -1), method="mse"),
    QuantSpec(qtype=int4, scheme=Scheme.AFFINE, granularity=PerGroup(32, 0), method="p99"),
    QuantSpec(qtype=uint8, scheme=Scheme.AFFINE, method="percentile:99.9", dynamic=True),
    QuantSpec(qtype=int8, granularity=PerChannel(0), learnable=True),
    QuantSpec(qtype=int8, granularity=PerChannel(-1), method="kl"),
    QuantSpec(qtype=int8, granularity=PerToken(), dynamic=True),
    QuantSpec(qtype=int16, scheme=Scheme.FIXED_POINT, frac_bits=8),
    QuantSpec(qtype=int16, scheme=Scheme.FIXED_POINT, frac_bits=0),
    QuantSpec(qtype=int8, scheme=Scheme.FIXED_POINT, frac_bits=30, method="auto"),
] + [QuantSpec(qtype=q, scheme=s, granularity=g, method=m)
     for q, s, g, m in itertools.product((int4, uint8), (Scheme.SYMMETRIC, Scheme.AFFINE),
                                         (PerTensor(), PerChannel(1), PerGroup(64)),
                                         ("minmax", "ema", "percentile:99.99"))]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.qtype.name}-{s.scheme.value}-"
                         f"{s.granularity.kind}-{s.method}-{s.frac_bits}")
def test_quant_spec_round_trips_through_json(spec):
    data = spec.to_dict()
    assert data["version"] == CONFIG_VERSION, "every serialized config carries its version"
    back = QuantSpec.from_dict(json.loads(json.dumps(data)))
    assert back == spec
    assert back.granularity == spec.granularity and type(back.granularity) is type(spec.granularity)


def test_quant_spec_parses_its_strings_once():
    spec = QuantSpec(qtype="uint4", scheme="AFFINE", granularity={"kind": "per_group", "size": 32},
                     method="P999")
    assert spec.qtype.name == "uint4" and spec.scheme is Scheme.AFFINE
    assert spec.granularity == PerGroup(32, -1)
    assert spec.method == "percentile:99.9"
    assert spec.method_name == "percentile" and spec.method_params == {"p": 99.9}


def test_quant_spec_defaults_and_replace():
    spec = QuantSpec()
    assert (spec.qtype, spec.scheme, spec.granularity, spec.method) == (
        int8, Scheme.SYMMETRIC, PerTensor(), "minmax")
    assert not spec.dynamic and not spec.learnable and spec.frac_bits is None
    other = spec.replace(qtype=int4, method="kl")
    assert other.qtype == int4 and other.method == "entropy" and spec.qtype == int8
    with pytest.raises(ConfigError, match="QuantSpec.frac_bits=8 is invalid"):
        spec.replace(frac_bits=8)


def test_weight_spec_is_per_channel_by_default():
    assert weight_spec().granularity == PerChannel(0) and weight_spec().qtype == int8
    assert weight_spec(int4, PerGroup(128)).granularity == PerGroup(128)
    assert weight_spec(method="mse").method == "mse"


def test_quant_spec_rejects_a_newer_version_and_unknown_keys():
    data = QuantSpec().to_dict()
    with pytest.raises(ConfigError, match=r"QuantSpec.version=2 is invalid: allowed an integer "
                                          r"in \[1, 1\]\. Fix: upgrade lowbit"):
        QuantSpec.from_dict(dict(data, version=CONFIG_VERSION + 1))
    for bad_version in (0, "1", 1.0, None):
        with pytest.raises(ConfigError, match=r"QuantSpec.version=.* is invalid"):
            QuantSpec.from_dict(dict(data, version=bad_version))
    with pytest.raises(ConfigError, match=r"QuantSpec keys=\['bitz'\] is invalid: allowed only "
                                          r"\[.*'qtype'.*\]\. Fix: remove the unknown keys"):
        QuantSpec.from_dict(dict(data, bitz=4))
    with pytest.raises(ConfigError, match=r"QuantSpec=\['int8'\] is invalid: allowed a dict "
                                          r"from to_dict\(\)"):
        QuantSpec.from_dict(["int8"])


def test_a_dict_without_version_is_read_as_the_current_version():
    assert QuantSpec.from_dict({"qtype": "int4"}) == QuantSpec(qtype=int4)


@pytest.mark.parametrize("kwargs,match", [
    ({"qtype": "int32"}, r"qtype='int32' is invalid"),
    ({"qtype": 8}, r"qtype=8 is invalid"),
    ({"scheme": "asym"}, r"scheme='asym' is invalid: allowed 'symmetric', 'affine'"),
    ({"granularity": "per_row"}, r"granularity=\{'kind': 'per_row'\} is invalid"),
    ({"granularity": {"kind": "per_group", "size": 0}}, r"PerGroup.size=0 is invalid"),
    ({"method": "kmeans"}, r"method='kmeans' is invalid"),
    ({"dynamic": 1}, r"QuantSpec.dynamic=1 is invalid: allowed True or False"),
    ({"learnable": "yes"}, r"QuantSpec.learnable='yes' is invalid: allowed True or False"),
    ({"dynamic": True, "learnable": True},
     r"QuantSpec.learnable=True is invalid: allowed False when dynamic=True\. Fix: dynamic "
     r"qparams are recomputed"),
    ({"frac_bits": 8}, r"QuantSpec.frac_bits=8 is invalid: allowed None unless scheme is "
                       r"FIXED_POINT\. Fix: remove frac_bits"),
    ({"scheme": "affine", "frac_bits": 4}, r"QuantSpec.frac_bits=4 is invalid: allowed None"),
    ({"scheme": "fixed_point"}, r"QuantSpec.frac_bits=None is invalid: allowed an integer in "
                                r"\[0, 30\]\. Fix: FIXED_POINT needs frac_bits"),
    ({"scheme": "fixed_point", "frac_bits": 31}, r"QuantSpec.frac_bits=31 is invalid"),
    ({"scheme": "fixed_point", "frac_bits": -1}, r"QuantSpec.frac_bits=-1 is invalid"),
    ({"scheme": "fixed_point", "frac_bits": 8.0}, r"QuantSpec.frac_bits=8.0 is invalid"),
    ({"scheme": "fixed_point", "frac_bits": 8, "dynamic": True},
     r"QuantSpec.scheme='fixed_point' is invalid: allowed FIXED_POINT only with dynamic=False "
     r"and learnable=False"),
    ({"scheme": "fixed_point", "frac_bits": 8, "learnable": True},
     r"QuantSpec.scheme='fixed_point' is invalid"),
    ({"scheme": "fixed_point", "frac_bits": 8, "granularity": PerChannel(0)},
     r"QuantSpec.granularity=\{'kind': 'per_channel', 'axis': 0\} is invalid: allowed "
     r"PerTensor\(\) with FIXED_POINT\. Fix: use PerTensor\(\)"),
])
def test_every_quant_spec_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantSpec(**kwargs)


# ------------------------------------------------------------------------- LayerConfig


@pytest.mark.parametrize("weight,act", [
    (None, None), (SPECS[1], None), (None, SPECS[3]), (SPECS[4], SPECS[0]), (SPECS[7], SPECS[7]),
])
def test_layer_config_round_trips_through_json(weight, act):
    cfg = LayerConfig(weight=weight, act=act)
    data = cfg.to_dict()
    assert data["version"] == CONFIG_VERSION
    back = LayerConfig.from_dict(json.loads(json.dumps(data)))
    assert back == cfg and back.weight == weight and back.act == act


def test_layer_config_accepts_spec_dicts():
    cfg = LayerConfig(weight={"qtype": "int4", "granularity": {"kind": "per_group", "size": 64}},
                      act=QuantSpec(dynamic=True).to_dict())
    assert cfg.weight == QuantSpec(qtype=int4, granularity=PerGroup(64))
    assert cfg.act == QuantSpec(dynamic=True)


@pytest.mark.parametrize("kwargs,match", [
    ({"weight": "int8"}, r"LayerConfig.weight='int8' is invalid: allowed a QuantSpec, a dict or "
                         r"None\. Fix: pass weight=QuantSpec\(...\) or weight=None"),
    ({"act": 8}, r"LayerConfig.act=8 is invalid: allowed a QuantSpec, a dict or None"),
    ({"weight": {"qtype": "int4", "bits": 4}}, r"QuantSpec keys=\['bits'\] is invalid"),
])
def test_layer_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LayerConfig(**kwargs)


def test_layer_config_from_dict_errors():
    with pytest.raises(ConfigError, match=r"LayerConfig.version=2 is invalid.*upgrade lowbit"):
        LayerConfig.from_dict({"version": 2, "weight": None})
    with pytest.raises(ConfigError, match=r"LayerConfig keys=\['activation'\] is invalid: "
                                          r"allowed only \['act', 'weight'\]"):
        LayerConfig.from_dict({"activation": None})
    with pytest.raises(ConfigError, match=r"LayerConfig=None is invalid: allowed a dict"):
        LayerConfig.from_dict(None)
    nested = LayerConfig(weight=QuantSpec()).to_dict()
    nested["weight"]["version"] = 2
    with pytest.raises(ConfigError, match=r"QuantSpec.version=2 is invalid"):
        LayerConfig.from_dict(nested)

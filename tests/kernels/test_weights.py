"""QuantWeight: the weight layout the kernels receive from lowbit.nn."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ConfigError, InputError
from lowbit.kernels.weights import quant_weight
from lowbit.primitives.affine import choose_qparams, dequantize, quantize
from lowbit.types import PerChannel, PerGroup, Scheme, int3, int4, int8, uint4, uint8


@pytest.mark.parametrize("qtype, gran, packed", [
    (int8, PerChannel(0), False), (uint8, PerChannel(0), False), (int4, PerGroup(32, 1), True),
    (uint4, PerGroup(16, 1), True), (int3, PerChannel(0), True)])
def test_layout_is_recognised_and_codes_round_trip(qweight, qtype, gran, packed):
    torch.manual_seed(0)
    w = torch.randn(6, 64)
    args = qweight(w, qtype, gran, Scheme.AFFINE)
    qw = quant_weight(*args)
    assert (qw.n, qw.k, qw.packed) == (6, 64, packed), "K comes from scale.shape·block_size"
    qp = choose_qparams(w, qtype, Scheme.AFFINE, gran)
    assert torch.equal(qw.codes(), quantize(w, qp)), "unpacked codes are the quantized codes"
    assert torch.equal(qw.dequantize(), dequantize(quantize(w, qp), qp)), "x̂ = (q − z)·s"
    assert qw.per_channel == isinstance(gran, PerChannel)


def test_symmetric_and_bytes(qweight):
    torch.manual_seed(0)
    qw = quant_weight(*qweight(torch.randn(4, 256), int4, PerGroup(128, 1)))
    assert qw.symmetric, "symmetric qparams have zero points 0"
    # 4·256/2 bytes of codes + 4·2 float32 scales + 4·2 int32 zero points
    assert qw.stored_nbytes() == 512 + 32 + 32


def test_rows_are_views_of_whole_blocks(qweight):
    torch.manual_seed(0)
    qw = quant_weight(*qweight(torch.randn(6, 64), int4, PerGroup(32, 1)))
    part = qw.rows(2, 5)
    assert (part.n, part.k) == (3, 64)
    assert torch.equal(part.dequantize(), qw.dequantize()[2:5])
    assert part.qdata.data_ptr() == qw.qdata[2:5].data_ptr(), "no copy"


def test_rows_that_cut_a_block_are_refused():
    qw = quant_weight(torch.zeros(4, 8, dtype=torch.int8), torch.ones(2, 1), torch.zeros(2, 1,
                      dtype=torch.int32), int8, (2, 8))
    with pytest.raises(InputError, match=r"cut a block of 2 rows"):
        qw.rows(1, 3)


def _args(**over):
    args = dict(qdata=torch.zeros(4, 8, dtype=torch.int8), scale=torch.ones(4, 1),
                zero_point=torch.zeros(4, 1, dtype=torch.int32), qtype=int8, block_size=(1, 8))
    args.update(over)
    return args


@pytest.mark.parametrize("over, match", [
    ({"qdata": torch.zeros(32, dtype=torch.int8)}, r"qdata has shape \(32,\).*2-D view"),
    ({"scale": [1.0]}, r"scale is a list; pass a torch tensor"),
    ({"qdata": torch.zeros(5, 8, dtype=torch.int8)}, r"qdata has 5 rows .* describes 4"),
    ({"qdata": torch.zeros(4, 7, dtype=torch.int8)}, r"qdata has shape \(4, 7\) .* \[4, 8\]"),
    ({"qdata": torch.zeros(4, 8, dtype=torch.int16)}, r"dtype torch.int16.*stored as torch.int8"),
    ({"zero_point": torch.zeros(4, 2, dtype=torch.int32)}, r"scale shape .* zero_point shape"),
    ({"zero_point": torch.zeros(4, 1)}, r"zero_point has dtype torch.float32.*integer"),
    ({"scale": torch.ones(4, 1, dtype=torch.int32)}, r"scale has dtype torch.int32.*float"),
    ({"qdata": torch.zeros(4, 8, dtype=torch.int8, device="meta")}, r"different devices"),
])
def test_inconsistent_tensors_are_refused(over, match):
    with pytest.raises(InputError, match=match):
        quant_weight(**_args(**over))


@pytest.mark.parametrize("block", [(1,), (0, 8), "1x8", (1.0, 8)])
def test_bad_block_size_is_a_config_error(block):
    with pytest.raises(ConfigError, match=r"block_size=.* two positive ints"):
        quant_weight(**_args(block_size=block))


def test_bad_qtype_is_a_config_error():
    with pytest.raises(ConfigError, match=r"qtype='int99'"):
        quant_weight(**_args(qtype="int99"))

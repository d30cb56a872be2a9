"""replay_structure: records of float-stage algorithms rebuild the module swaps."""

from torch import nn

from lowbit.model.structure import replay_structure
from lowbit.nn.clip import ChannelClip
from lowbit.records import LayerRecord


def test_records_replay_folds_clips_and_biases():
    model = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU6(),
                          nn.Conv2d(4, 3, 1, bias=False), nn.ReLU6())
    records = [LayerRecord("0", "Conv2d", "quantized",
                           metrics={"bn_fold": "1", "cle_relu6_as_clip": "2"}),
               LayerRecord("3", "Conv2d", "quantized", metrics={"bias_correction": "weight"}),
               LayerRecord("missing", "Conv2d", "quantized", metrics={"bn_fold": "x"})]
    replay_structure(model, records)
    assert isinstance(model[1], nn.Identity) and isinstance(model[2], ChannelClip)
    assert model[0].bias is not None and model[3].bias is not None
    assert isinstance(model[4], nn.ReLU6), "a ReLU6 no record names stays"

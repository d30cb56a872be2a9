"""lowbit.export.signature: input names, dynamic axes and flattened outputs of an export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError, ExportError
from lowbit.export.signature import (Flat, check_dynamic_sizes, dynamic_axes_for,
                                     flatten_outputs, input_names, split_inputs)


class TwoInputs(nn.Module):
    def forward(self, input_ids, attention_mask=None):
        return {"ids": input_ids.float(), "mask": attention_mask, "note": "not a tensor"}


def test_inputs_are_named_after_forward_or_the_dict_keys():
    model = TwoInputs()
    ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    assert split_inputs(model, (ids, mask))[:2] == (False, ["input_ids", "attention_mask"])
    by_kw, names, tensors = split_inputs(model, {"attention_mask": mask, "input_ids": ids,
                                                 "token_type_ids": None})
    assert by_kw and names == ["attention_mask", "input_ids"], "None values are left out"
    assert tensors[0] is mask
    assert input_names(nn.Sequential(nn.Identity()), 2) == ["input_0", "input_1"]


@pytest.mark.parametrize("bad", [None, (), {"x": 3}, [torch.zeros(2), "text"]])
def test_non_tensor_examples_are_refused(bad):
    with pytest.raises(ConfigError, match=r"example_inputs=.* is invalid: allowed a tensor, a "
                                          r"tuple of tensors or a dict of tensors"):
        split_inputs(TwoInputs(), bad)


def test_default_dynamic_axes_are_batch_and_token_sequence():
    names = ["x", "ids", "scalar"]
    tensors = [torch.zeros(4, 3, 8, 8), torch.zeros(4, 7, dtype=torch.long), torch.tensor(1.0)]
    assert dynamic_axes_for(names, tensors, True, None) == {
        "x": {0: "batch"}, "ids": {0: "batch", 1: "sequence"}}
    assert dynamic_axes_for(names, tensors, False, None) == {}


def test_explicit_dynamic_axes_are_checked():
    names, tensors = ["ids"], [torch.zeros(4, 7, dtype=torch.long)]
    assert dynamic_axes_for(names, tensors, True, {"ids": [1]}) == {"ids": {1: "ids_dim1"}}
    with pytest.raises(ConfigError, match=r"dynamic_axes='mask' is invalid: allowed an input "
                                          r"name: \['ids'\]"):
        dynamic_axes_for(names, tensors, True, {"mask": {0: "batch"}})
    with pytest.raises(ConfigError, match=r"dynamic_axes\['ids'\]=\{2: 'x'\} is invalid: allowed "
                                          r"\{axis: name\} with axes in \[0, 1\]"):
        dynamic_axes_for(names, tensors, True, {"ids": {2: "x"}})
    with pytest.raises(ConfigError, match=r"dynamic_axes=\[0\] is invalid: allowed a dict"):
        dynamic_axes_for(names, tensors, True, [0])
    with pytest.raises(ConfigError, match=r"dynamic_batch='yes' is invalid: allowed True or "
                                          r"False"):
        dynamic_axes_for(names, tensors, "yes", None)


def test_a_dynamic_axis_needs_an_example_of_size_two_or_more():
    with pytest.raises(ConfigError, match=r"example_inputs\['x'\].shape\[0\]=1 is invalid: "
                                          r"allowed at least 2 for the dynamic axis 'batch'"):
        check_dynamic_sizes(["x"], [torch.zeros(1, 3)], {"x": {0: "batch"}})


def test_outputs_are_flattened_to_named_tensors():
    t = torch.zeros(2)
    assert flatten_outputs(t) == (["output"], [t])
    assert flatten_outputs((t, "x", t))[0] == ["output_0", "output_2"]
    assert flatten_outputs({"a": t, "b": None})[0] == ["a"]
    with pytest.raises(ExportError, match=r"the model returned str without tensors"):
        flatten_outputs("nothing")


def test_flat_calls_by_keyword_and_returns_a_tuple():
    ids, mask = torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    out = Flat(TwoInputs(), ["attention_mask", "input_ids"], True)(mask, ids)
    assert isinstance(out, tuple) and len(out) == 2
    assert torch.equal(out[0], ids.float()) and torch.equal(out[1], mask)

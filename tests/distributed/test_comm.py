"""lowbit.distributed in one process: every collective is a no-op, sharding splits in order,
and the errors name the fix (the 2-process behaviour is in test_observers/test_layers)."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit import distributed as D
from lowbit.errors import ConfigError


def test_without_a_process_group_lowbit_runs_as_one_process():
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1 and D.is_main()
    t = torch.tensor([1.0, -2.0])
    assert D.all_reduce_(t, "max") is t and t.tolist() == [1.0, -2.0]
    assert D.broadcast_(t, 0) is t and t.tolist() == [1.0, -2.0]
    assert D.all_gather_json({"a": 1}) == [{"a": 1}]
    assert D.broadcast_json([1, 2], 0) == [1, 2]
    assert D.all_reduce_count(7) == 7 and D.owns(3) and D.owner(3) == 0
    D.barrier()


def test_an_unknown_reduce_operation_is_refused():
    with pytest.raises(ConfigError, match="op='mean'"):
        D.all_reduce_(torch.zeros(1), "mean")


@pytest.mark.parametrize("n,world", [(7, 3), (6, 2), (5, 5), (9, 4), (1, 1)])
def test_shards_are_contiguous_balanced_and_cover_the_list_in_order(n, world):
    items = list(range(n))
    shards = [D.shard_batches(items, r, world) for r in range(world)]
    assert sum(shards, []) == items
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shard_batches_in_one_process_is_the_whole_list_and_public():
    assert lowbit.shard_batches(iter([1, 2, 3])) == [1, 2, 3]


@pytest.mark.parametrize("args,match", [
    (([1], 0, 2), "at least one per rank"),
    (([1, 2], 2, 2), "rank=2"),
    (([1, 2], 0, 0), "world=0"),
    ((5,), "batches='int'"),
])
def test_bad_shard_arguments_name_the_value_and_the_fix(args, match):
    with pytest.raises(ConfigError, match=match) as info:
        D.shard_batches(*args)
    assert "Fix:" in str(info.value)


def test_backend_follows_the_device():
    assert D.backend_for("cpu") == "gloo"
    assert D.backend_for(torch.device("cuda", 0)) == "nccl"
    assert D.backend_for("meta") == "gloo"


def test_init_from_env_needs_more_than_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert D.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        D.init_from_env()
    assert not D.is_initialized()


def test_local_blocks_nest_and_restore():
    with D.local():
        with D.local():
            assert not D.is_distributed()
        assert not D.is_distributed()
    assert D.comm._local_depth == [0]


def test_calibration_observers_are_the_activation_quantizers_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    fq = lowbit.prepare(model, "w8a8-static")
    with lowbit.calibrate(fq):
        fq(torch.randn(3, 4))
        found = D.calibration_observers(fq)
        assert [name for name, _ in found] == ["0.act_quantizer", "2.act_quantizer"]
        assert D.reduce_model_observers(fq) == 0  # alone: nothing to reduce
    assert D.calibration_observers(fq) == []  # frozen: nothing observing any more


def test_the_readme_distributed_snippet_runs_in_one_process(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    import dist_cases

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```", readme, flags=re.M | re.S)
                if "shard_batches(" in b]
    monkeypatch.chdir(tmp_path)
    scope = {"lowbit": lowbit, "model": dist_cases.StandIn(width=64),
             "calib": dist_cases.model_batches(False)}
    exec(compile(block, "README.md", "exec"), scope)
    assert len(scope["mine"]) == len(scope["calib"])  # one process: the whole list
    assert any("gptq_output_mse" in r.metrics for r in scope["records"])
    assert (tmp_path / "ckpt" / "manifest.json").is_file()

"""Reading a torchrun launch from the environment (pure; the 2-process runs are in
tests/test_distributed.py)."""

from __future__ import annotations

import pytest

from tuner.distributed import Launch, launch_from_env, rank_device

TORCHRUN = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "abc", "TORCHELASTIC_RESTART_COUNT": "2"}


def test_a_plain_process_is_no_launch():
    assert launch_from_env({}) is None
    assert launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None


def test_torchrun_environment_gives_the_rank_and_keys_of_this_attempt():
    launch = launch_from_env(TORCHRUN)
    assert (launch.rank, launch.world, launch.local_rank, launch.master_port) == (1, 2, 1, 29500)
    assert launch.key("long_run") == "redheart/abc/2/long_run"
    assert rank_device("cuda", launch) == "cuda:1"
    assert rank_device("cpu", launch) == "cpu" and rank_device("cuda", None) == "cuda"


def test_several_processes_without_torchrun_are_refused_with_the_command_to_use():
    env = {k: v for k, v in TORCHRUN.items() if not k.startswith("TORCHELASTIC")}
    with pytest.raises(ValueError, match="torchrun --nproc-per-node N"):
        launch_from_env(env)


def test_a_launch_is_checked_at_construction():
    with pytest.raises(ValueError, match="got 1"):
        Launch(rank=0, world=1, local_rank=0, master_addr="h", master_port=1, run_id="r",
               restart=0)
    with pytest.raises(ValueError, match="got 2"):
        Launch(rank=2, world=2, local_rank=0, master_addr="h", master_port=1, run_id="r",
               restart=0)

"""Reading a torchrun launch from the environment (pure; the 2-process runs are in
tests/e2e/test_distributed.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


_FOLLOWER = """
import sys, threading
from tuner.distributed import exit_rank
# A thread nobody stops: a normal interpreter exit would wait on it for ever.
threading.Thread(target=threading.Event().wait).start()
print("rank 1: the long run is done; leaving")  # block-buffered: stdout is a pipe
exit_rank(3)
"""


def test_a_follower_leaves_with_its_code_and_output_without_the_interpreters_teardown():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    out = subprocess.run([sys.executable, "-c", _FOLLOWER], cwd=Path(__file__).parents[2],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert out.stdout == "rank 1: the long run is done; leaving\n"

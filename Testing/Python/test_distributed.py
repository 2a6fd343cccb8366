"""``duplus train`` under torchrun: two CPU processes (gloo) train a few steps with
DistributedDataParallel and end with identical weights, though each drew its own patches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from DuPLUSLib.training.decathlon import write_toy_dataset

# Run by each rank. ``train`` keeps its network to itself, so the script records the parameters
# the optimiser receives (the very tensors DDP keeps in step) and writes their checksum per rank.
RANK_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import torch

    torch.set_num_threads(1)
    captured = []
    _AdamW = torch.optim.AdamW

    class RecordingAdamW(_AdamW):
        def __init__(self, params, *args, **kwargs):
            params = list(params)
            captured.extend(params)
            super().__init__(params, *args, **kwargs)

    torch.optim.AdamW = RecordingAdamW

    from DuPLUSLib.training.config import TrainingConfig
    from DuPLUSLib.training.loop import train

    config = TrainingConfig.from_dict(json.loads(open(sys.argv[1], encoding="utf-8").read()))
    losses = []
    train(config, sys.argv[2], device="cpu", progress=False, on_step=lambda s, l: losses.append(l))
    digest = hashlib.sha256()
    for p in captured:
        digest.update(p.detach().cpu().numpy().tobytes())
    rank = os.environ["RANK"]
    with open(os.path.join(sys.argv[3], f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump({"checksum": digest.hexdigest(), "steps": len(losses), "losses": losses,
                   "world": os.environ["WORLD_SIZE"]}, handle)
    """
)


def free_port() -> int:
    """A port nobody listens on (torchrun's port 0 does not pick one: the ranks wait forever)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_end_with_identical_weights(tmp_path: Path):
    data = write_toy_dataset(tmp_path / "toy", cases=2)
    config = {
        "name": "ddp",
        "seed": 0,
        "network": {"channels": [8, 16], "encoder_blocks": 1, "decoder_blocks": 1, "conditioned_decoder_stages": 1,
                    "head_embed": 16, "condition_hidden": 16, "head_channels": 4},
        "inference": {"spacing": [3, 3, 3], "patch_size": [16, 16, 16]},
        "prompts": {"code": "onehot"},
        "datasets": [{"kind": "decathlon", "path": str(data), "mapping": str(data / "mapping.json")}],
        "training": {"steps": 4, "batch_size": 1, "learning_rate": 0.01, "warmup_steps": 1, "checkpoint_every": 2,
                     "log_every": 1, "threads": 1, "data_workers": 1, "precision": "fp32", "augment": False},
    }
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / "rank.py").write_text(RANK_SCRIPT, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         str(tmp_path / "rank.py"), str(tmp_path / "config.json"), str(tmp_path / "run"), str(out)],
        capture_output=True, text=True, timeout=240, env=environment, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert all(r["world"] == "2" and r["steps"] == 4 for r in ranks)
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank drew its own patches
    assert (tmp_path / "run" / "model" / "config.json").is_file()  # only rank 0 writes, once

"""The command prefix that starts a script in two CPU processes on gloo, as a user's `accelerate launch` would."""

from __future__ import annotations

import sys

TWO_CPU_PROCESSES = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]

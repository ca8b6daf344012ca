"""MultiWorkerMirroredStrategy: two worker processes on localhost train a few steps together."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

import aa_keras.datasets  # noqa: F401  (registers glyph_pairs)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = """
import sys
import numpy as np
from aa_keras.training import recipes
from aa_keras.training.distribute import create_strategy, is_chief
from aa_keras.training import classification
from aa_keras.training.settings import settings_for

model_dir, data_dir, weights_path = sys.argv[1:]
strategy = create_strategy("multi_worker_mirrored")
recipe = recipes.get_recipe("quick", epochs=1, global_batch_size=16)
model, metrics = classification.train(strategy, settings_for(
    "classification", "conv_small", model_dir, recipe, data_dir=data_dir, steps_per_epoch=3, checkpoint_steps=2,
    verbose=False,
))
assert strategy.num_replicas_in_sync == 2 and metrics["steps"] == 3
print("chief" if is_chief(strategy) else "worker")
np.save(weights_path, np.concatenate([w.ravel() for w in model.get_weights()]))
"""


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_together_and_agree_on_the_weights(tmp_path, data_dir):
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    model_dir = tmp_path / "run"
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        command = [sys.executable, "-c", WORKER, str(model_dir), data_dir, str(tmp_path / f"weights{index}.npy")]
        workers.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=300))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    assert [out.split()[-1] for out, _ in outputs] == ["chief", "worker"]
    chief_weights, worker_weights = (np.load(tmp_path / f"weights{i}.npy") for i in range(2))
    np.testing.assert_array_equal(chief_weights, worker_weights)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and (model_dir / "model.keras").exists()
    # The statistics were re-estimated over 1000 images, 500 per worker, gathered: the workers agree (above).
    assert metrics["batch_norm"]["images"] == 1000 and metrics["batch_norm"]["layers"] == 5
    # Only the chief's outputs remain: the other worker's scratch folder is gone.
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "checkpoints", "labels.txt", "logs", "metrics.json", "model.keras", "run_config.json", "train.log"
    ]
    assert "Re-estimated 5 BatchNormalization layers over 1000 images" in (model_dir / "train.log").read_text()

"""`tf.distribute` strategies for the trainer, through Model Garden's `distribute_utils`."""

import tensorflow as tf
from official.common import distribute_utils

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def create_strategy(name, num_gpus=0, tpu=None, devices=None):
    """The strategy `name`.

    Args:
        name: "default" (no distribution), "one_device", "mirrored" (over `num_gpus` GPUs, or
            the explicit `devices`), "multi_worker_mirrored" (cluster from `TF_CONFIG`) or "tpu".
        num_gpus: GPUs for "one_device" / "mirrored"; 0 runs on the CPU.
        tpu: TPU address or name for "tpu" ("local" for TPUs attached to this host).
        devices: device names for "mirrored", e.g. ["CPU:0", "CPU:1"]; overrides `num_gpus`.

    Returns:
        A `tf.distribute.Strategy`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Invalid `strategy`: received strategy={name!r}, expected one of {STRATEGIES}.")
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 0:
        raise ValueError(f"Invalid `num_gpus`: expected an int >= 0, received num_gpus={num_gpus!r}.")
    if name == "tpu" and not tpu:
        raise ValueError("Invalid `tpu`: strategy='tpu' needs a TPU address or name (`--tpu`), 'local' for local TPUs.")
    if devices:
        if name != "mirrored":
            raise ValueError(f"Invalid `devices`: devices={devices!r} is only valid with strategy='mirrored', not {name!r}.")
        names = [tf.DeviceSpec.from_string(d).to_string() for d in devices]
        if len(set(names)) != len(names):
            raise ValueError(f"Invalid `devices`: devices={devices!r} names a device twice; list each once.")
        missing = [d for d in devices if not _exists(d)]
        if missing:
            raise ValueError(
                f"Invalid `devices`: {missing} do not exist on this machine; the devices present are {_present()}."
            )
        return tf.distribute.MirroredStrategy(devices=list(devices))
    # Physical devices: listing logical ones would start the runtime before a multi-worker
    # strategy configures its collectives.
    gpus = len(tf.config.list_physical_devices("GPU")) if num_gpus else 0
    if name in ("one_device", "mirrored") and num_gpus > gpus:
        raise ValueError(
            f"Invalid `num_gpus`: num_gpus={num_gpus} but TensorFlow sees {gpus} GPUs; the devices present are "
            f"{_present()}. Use --num_gpus={gpus} or fewer (0 runs on the CPU)."
        )
    return distribute_utils.get_distribution_strategy(
        distribution_strategy="off" if name == "default" else name, num_gpus=num_gpus, tpu_address=tpu
    )


def _local_devices():
    """(type, index) of each local logical device, e.g. ("CPU", 0)."""
    specs = [tf.DeviceSpec.from_string(device.name) for device in tf.config.list_logical_devices()]
    return [(spec.device_type, spec.device_index) for spec in specs]


def _present():
    """The local logical devices, as "TYPE:index" names."""
    return ", ".join(f"{kind}:{index}" for kind, index in _local_devices())


def _exists(device):
    """Whether the device name `device` (e.g. "GPU:1", "/cpu:0") is a local logical device."""
    spec = tf.DeviceSpec.from_string(device)
    return ((spec.device_type or "").upper(), spec.device_index) in _local_devices()


def is_chief(strategy):
    """Whether this process writes the run's outputs: the chief, or worker 0 without a chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_id(strategy):
    """"task_type_task_id" of this process in a cluster, "" outside one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return ""
    return f"{resolver.task_type}_{resolver.task_id}"

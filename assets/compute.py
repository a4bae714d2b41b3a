"""Where training steps run: the `train` pool and the pod resources they ask for. No Dagster.

`TRAIN_POOL` serialises training on one machine (the pool is limited to one slot by
orchestration/instance.py). `GPU_STEP_TAGS` are op tags read only by dagster-k8s's
`k8s_job_executor` (LENSLESS_EXECUTOR=k8s): each training step's pod requests one GPU and is
scheduled on a GPU node (the node label and taint most GPU node pools carry).
"""

TRAIN_POOL = "train"

GPU_STEP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1", "memory": "32Gi"},
                                           "requests": {"cpu": "4", "memory": "16Gi"}}},
        "pod_spec_config": {
            "node_selector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
}

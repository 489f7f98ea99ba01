"""Kubernetes pod sizes per asset step, for dagster-k8s (``op_tags``) and its ``k8s_job_executor``.

Only read when steps run as Kubernetes Jobs (``dagster_k8s.k8s_job_executor``); the local and compose
deployments ignore the tags. Heavy per-partition work runs on the Ray cluster, so a CPU step pod is a
small driver; a GPU step pod holds the card itself (``vae_model`` trains in-process, and
``normalized_spectra`` / ``spectral_features`` pick CUDA only if their driver sees a GPU).
"""

from __future__ import annotations

from typing import Any

#: GPU nodes: the label set by NVIDIA GPU feature discovery and the taint GPU node pools usually carry.
#: docker/k8s/raycluster.yaml's gpu-workers use the same pair (tests/test_deployment_files.py checks).
GPU_NODE_SELECTOR: dict[str, str] = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS: list[dict[str, str]] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

# Quantities are strings, as the Kubernetes API writes them. nvidia.com/gpu is an extended resource:
# its request must equal its limit.
CPU_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "1", "memory": "4Gi"},
    "limits": {"memory": "8Gi"},
}
GPU_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"},
    "limits": {"memory": "64Gi", "nvidia.com/gpu": "1"},
}

#: ``op_tags`` of a driver step (raw_spectra and the other CPU assets).
K8S_CPU_TAGS: dict[str, Any] = {"dagster-k8s/config": {"container_config": {"resources": CPU_RESOURCES}}}

#: ``op_tags`` of a step that needs the GPU (normalized_spectra, spectral_features, vae_model).
K8S_GPU_TAGS: dict[str, Any] = {
    "dagster-k8s/config": {
        "container_config": {"resources": GPU_RESOURCES},
        "pod_spec_config": {"node_selector": GPU_NODE_SELECTOR, "tolerations": GPU_TOLERATIONS},
    }
}

#: ``execution: config:`` for ``k8s_job_executor``: untagged steps get the CPU size; a run starts at
#: most this many step pods at once (the ``gpu`` pool still admits one GPU step at a time).
K8S_EXECUTOR_CONFIG: dict[str, Any] = {
    "max_concurrent": 4,
    "step_k8s_config": {"container_config": {"resources": CPU_RESOURCES}},
}

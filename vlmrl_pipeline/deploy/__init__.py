"""Deployment files (not code): ``k8s/`` holds the Kubernetes deployment (Helm values, instance config, PVC)."""

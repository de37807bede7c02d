"""Chart tier: the Helm chart rendered offline and validated against the Kubernetes schemas."""

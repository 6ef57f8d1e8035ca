"""The InferenceKey Manager: control plane, gateway and reconcile loops."""

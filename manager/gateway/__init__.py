"""The data-plane gateway: `/endpoint/{project}/{workload}/...` to a ready replica's agent."""

"""Runtimes that launch engines: containers through Docker, or plain processes on bare metal."""

from worker_agent.runtimes.base import LaunchError, LaunchSpec, RunningEngine, Runtime

__all__ = ["LaunchError", "LaunchSpec", "RunningEngine", "Runtime"]

"""Async jobs: the envelope a client submits, the rows they live in, and the dispatcher that
claims them (``FOR UPDATE SKIP LOCKED``) and runs them through a ready replica."""

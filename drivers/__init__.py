"""Drivers run from a laptop or CI against an AWS account (see docs/drivers.md)."""

"""Deployment: `bridge init` turns a description of a federation into every file it runs on."""

from .init import AgencySpec, DeploymentSpec, InitResult, init_deployment, load_spec

__all__ = ["AgencySpec", "DeploymentSpec", "InitResult", "init_deployment", "load_spec"]

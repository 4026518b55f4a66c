"""Promote an MLflow run to a Seldon Core SeldonDeployment when its metrics pass the gates."""

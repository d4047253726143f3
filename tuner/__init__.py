"""What is searched and decided: one module per phase, plus the pipeline that runs them."""

from .pipeline import PipelineConfig, run

__all__ = ["PipelineConfig", "run"]

"""Evaluation libraries: FID (Inception features, exact distributed statistics), VQA accuracy and prompts,
and the tiny evaluation sets built from scikit-image photos. The eval steps in `vlv/steps/` use these."""

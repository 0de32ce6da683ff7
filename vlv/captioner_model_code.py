"""The file MLflow runs to build the registered captioner model ("models from code", see vlv.serving).

MLflow copies this file into the model and executes it when the model is loaded, instead of unpickling an
object: nothing but this import and one call runs, and the model class comes from the installed `vlv`.
"""

import mlflow.models

from vlv.serving import CaptionerModel

mlflow.models.set_model(CaptionerModel())

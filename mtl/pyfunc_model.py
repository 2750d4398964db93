"""The file MLflow loads an mtl task model from (MLflow's "models from code"; no pickled objects).

The task it predicts is read from the model's `task` artifact.
"""

import mlflow

from mtl.pyfunc import TaskModel

mlflow.models.set_model(TaskModel())

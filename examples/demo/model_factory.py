"""Local model factory for the demo (``model-manager -l examples/demo -c examples/demo/pv_mappings.yaml``).

The runtime imports this file, instantiates ``ModelFactory()`` and calls ``get_model()``; the model
returned must have ``evaluate(dict) -> dict`` (here a lume-model LUMEBaseModel: y = 2*x1 - x2).
"""

from model_deploy.runtime.demo_models import make_linear_demo_model


class ModelFactory:
    def __init__(self) -> None:
        self.model = make_linear_demo_model(a=2.0, b=-1.0)

    def get_model(self):
        return self.model

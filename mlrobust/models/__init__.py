"""Models by name: `models.make(config.model, num_outputs)`.

Every model module in `MODELS` provides
  make(model_config, num_outputs) -> flax.linen.Module whose
      apply(variables, x, train=...) gives pre-activations [B, num_outputs];
  validate(model_config)  raising ValueError that says what is allowed;
  label(model_config) -> str, e.g. 'densenet-40-k12' (for result files);
  lipschitz_structure(variables, image_size, model_config) -> the layer
      structure that `mlrobust.spectral.network_bounds` takes, so that the
      spectral math never reads a module's parameter names.
"""

from types import ModuleType

from mlrobust.models import densenet

MODELS = {'densenet': densenet}


def get(name: str) -> ModuleType:
  """The model module `name`; raises ValueError listing the known ones."""
  try:
    return MODELS[name]
  except KeyError:
    raise ValueError(f'unknown model {name!r}; choose one of '
                     f'{sorted(MODELS)}') from None


def make(model_config, num_outputs: int):
  """The Flax module of `model_config` with `num_outputs` outputs."""
  return get(model_config.name).make(model_config, num_outputs)


def validate(model_config) -> None:
  get(model_config.name).validate(model_config)


def label(model_config) -> str:
  """A short name of the architecture and size, e.g. 'densenet-13-k8'."""
  return get(model_config['name']).label(model_config)


def lipschitz_structure(model_config, variables, image_size: int) -> list:
  return get(model_config.name).lipschitz_structure(variables, image_size,
                                                    model_config)

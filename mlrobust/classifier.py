"""The classifier view: one object every consumer uses to query a model.

A `Classifier` bundles an apply function `(variables, x) -> pre-activations`,
its variables, the head activation, the target representation and the training
loss. From images it gives the outputs in target space, the class scores of the
generic distance decoding, the prediction, and the per-example loss against the
target representation of given classes. It is a pytree whose leaves are the
variables and the targets, so it can be passed through `jax.jit` as an ordinary
argument without baking the parameters into the compiled program.

Example (any JAX function, here a linear model on 2 features, 3 classes):

  clf = classifier.from_function(lambda x: x.reshape(len(x), -1) @ w,
                                 targets=jnp.eye(3), activation='softmax',
                                 loss='ce')
  clf.predict(x)            # [B] int32
  clf.loss(x, y)            # [B]
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mlrobust import heads
from mlrobust import losses
from mlrobust import sharding


class Evaluation(NamedTuple):
  """Everything one forward pass gives; `loss` is None when no labels given."""
  logits: jax.Array      # [B, d] pre-activations
  outputs: jax.Array     # [B, d] head outputs in target space
  scores: jax.Array      # [B, K] minus distances to the targets
  prediction: jax.Array  # [B] int32, nearest target
  loss: Optional[jax.Array]  # [B] training loss against targets[y]


def evaluate_logits(logits: jax.Array, targets: jax.Array, activation: str,
                    loss_name: str,
                    labels: Optional[jax.Array] = None) -> Evaluation:
  """Decodes pre-activations [B, d]; shared by the classifier and training."""
  outputs = heads.activate(activation, logits)
  scores = heads.class_scores(outputs, targets)
  prediction = jnp.argmax(scores, axis=-1).astype(jnp.int32)
  loss = None
  if labels is not None:
    loss = losses.get(loss_name)(logits, outputs, targets[labels])
  return Evaluation(logits, outputs, scores, prediction, loss)


@flax.struct.dataclass
class Classifier:
  """A model seen through its head and the generic decoding.

  Attributes:
    apply_fn: (variables, x [B, H, W, C]) -> pre-activations [B, d], in
      inference mode.
    variables: pytree of the model's variables (None for a closed function).
    targets: [K, d] target representation of each class.
    activation: head activation name, a key of `heads.ACTIVATIONS`.
    loss_name: training loss name, a key of `losses.LOSSES`.
  """
  apply_fn: Callable[[Any, jax.Array], jax.Array] = flax.struct.field(
      pytree_node=False)
  variables: Any
  targets: jax.Array
  activation: str = flax.struct.field(pytree_node=False, default='identity')
  loss_name: str = flax.struct.field(pytree_node=False, default='mse')

  @property
  def num_classes(self) -> int:
    return self.targets.shape[0]

  def logits(self, x: jax.Array) -> jax.Array:
    """Pre-activations [B, d]."""
    return self.apply_fn(self.variables, x)

  def evaluate(self, x: jax.Array,
               labels: Optional[jax.Array] = None) -> Evaluation:
    """One forward pass: logits, outputs, scores, prediction (and loss)."""
    return evaluate_logits(self.logits(x), self.targets, self.activation,
                           self.loss_name, labels)

  def outputs(self, x: jax.Array) -> jax.Array:
    """Head outputs in target space [B, d]."""
    return heads.activate(self.activation, self.logits(x))

  def scores(self, x: jax.Array) -> jax.Array:
    """Class scores [B, K]: minus the distance to each target."""
    return heads.class_scores(self.outputs(x), self.targets)

  def predict(self, x: jax.Array) -> jax.Array:
    """Predicted class [B] int32: the nearest target."""
    return self.evaluate(x).prediction

  def loss(self, x: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example training loss [B] against targets[labels]."""
    return self.evaluate(x, labels).loss


@dataclasses.dataclass(frozen=True)
class _InferenceApply:
  """`model.apply(v, x, train=False)`, hashable by the module's fields.

  Equal modules give equal apply functions, so two classifiers of the same
  architecture share one compiled program under `jax.jit`.
  """
  model: Any

  def __call__(self, variables, x):
    return self.model.apply(variables, x, train=False)


def from_model(model, variables: Any, targets: jax.Array, *, activation: str,
               loss: str) -> Classifier:
  """Wraps a Flax module; `apply(variables, x, train=False)` gives logits."""
  apply_fn = _InferenceApply(model)
  heads.activate(activation, jnp.zeros((1,)))  # Validates the name early.
  losses.get(loss)
  return Classifier(apply_fn=apply_fn, variables=variables,
                    targets=jnp.asarray(targets), activation=activation,
                    loss_name=loss)


def predict_batched(clf: 'Classifier', x, batch_size: int) -> np.ndarray:
  """Predicted classes [B] of x (numpy), batch_size images per call, the
  images split across the devices of `sharding.current()`."""
  mesh = sharding.current()
  ndev = mesh.devices.size
  if ndev > 1:
    clf = sharding.replicate(clf, mesh)
  out = []
  for i in range(0, len(x), batch_size):
    xb = np.asarray(x[i:i + batch_size])
    if ndev > 1:
      xb = sharding.shard(sharding.pad(xb, ndev), mesh)
    out.append(np.asarray(_predict(clf, xb))[:min(batch_size, len(x) - i)])
  return np.concatenate(out or [np.zeros((0,), np.int32)])


_predict = jax.jit(lambda clf, x: clf.predict(x))


def from_function(fn: Callable[..., jax.Array], targets: jax.Array, *,
                  params: Any = None, activation: str = 'identity',
                  loss: str = 'mse') -> Classifier:
  """Wraps a plain JAX function: `fn(x)`, or `fn(params, x)` if params given."""
  if params is None:
    apply_fn = lambda v, x: fn(x)
  else:
    apply_fn = fn
  heads.activate(activation, jnp.zeros((1,)))
  losses.get(loss)
  return Classifier(apply_fn=apply_fn, variables=params,
                    targets=jnp.asarray(targets), activation=activation,
                    loss_name=loss)

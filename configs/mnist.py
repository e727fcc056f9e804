"""mnist configs.

  python launch.py --config=configs/mnist.py:tanh_mse,cpu \
      --workdir=/tmp/mnist_tanh_mse

trains the R:TANH:MSE model (cpu size) and prints its clean test accuracy.
Words after the colon: a preset (softmax_ce, softmax_mse, tanh_mse; default
tanh_mse) and a size (paper, cpu, smoke; default paper). See configs/common.py.
"""

from configs import common


def get_config(arg=None):
  return common.get_config('mnist', arg)

"""The published numbers of Saito & Roy, as data, with the table they come from.

Keys: dataset ('cifar10', 'mnist', 'fashion_mnist'; the paper's CIFAR-10 is
the original dataset, which mlrobust compares against its `cifar10_jpeg`
copy), preset ('softmax_ce' = O:SOFTMAX:CE, 'softmax_mse' = O:SOFTMAX:MSE,
'tanh_mse' = R:TANH:MSE), attack (mlrobust names: 'pgd' is the paper's
"Madry et al.", 'cw_l2_distance' is the paper's tailored attack, "Ours" in
Table 7), then the swept parameter's value. Every value is transcribed from
the paper; none is computed.
"""

# Table 1 (swept parameter of each attack) and Table 2 (held constant; the
# cleverhans defaults).
SWEPT = {'bim': 'eps', 'cw_l2': 'initial_const', 'deepfool': 'max_iter',
         'fgsm': 'eps', 'lbfgs': 'initial_const', 'pgd': 'eps', 'mim': 'eps',
         'cw_l2_distance': 'initial_const'}
CONSTANTS = {
    'bim': {'eps_iter': 0.05, 'nb_iter': 10},
    'cw_l2': {'binary_search_steps': 5, 'max_iterations': 1000},
    'deepfool': {'nb_candidate': 10, 'overshoot': 0.02},
    'lbfgs': {'binary_search_steps': 5, 'max_iterations': 1000},
    'pgd': {'eps_iter': 0.01, 'nb_iter': 40},
    'mim': {'eps_iter': 0.06, 'nb_iter': 10},
}

PRESETS = ('softmax_ce', 'softmax_mse', 'tanh_mse')
# The paper's three models (its Section 4.2): (head activation, targets, loss).
HEADS = {
    'softmax_ce': ('softmax', 'onehot', 'ce'),
    'softmax_mse': ('softmax', 'onehot', 'mse'),
    'tanh_mse': ('tanh', 'codebook', 'mse'),
}
PAPER_NAMES = {'softmax_ce': 'O:SOFTMAX:CE', 'softmax_mse': 'O:SOFTMAX:MSE',
               'tanh_mse': 'R:TANH:MSE'}
DATASETS = ('cifar10', 'mnist', 'fashion_mnist')


def _grid(values, rows):
  """{dataset: {preset: {value: number}}} from rows in DATASETS x PRESETS."""
  out = {}
  for i, ds in enumerate(DATASETS):
    out[ds] = {p: dict(zip(values, rows[3 * i + j]))
               for j, p in enumerate(PRESETS)}
  return out

# Table 3: accuracy under untargeted white-box attacks (higher = more robust).
# Rows: CIFAR-10 (CE, MSE, TANH), MNIST (...), F-MNIST (...).
TABLE3 = {
    'cw_l2': _grid((0.01, 0.1, 1.0, 10.0), [
        (0.022, 0.022, 0.022, 0.022), (0.078, 0.044, 0.039, 0.039),
        (0.583, 0.584, 0.586, 0.585),
        (0.008, 0.008, 0.008, 0.008), (0.897, 0.182, 0.123, 0.118),
        (0.995, 0.995, 0.975, 0.983),
        (0.041, 0.041, 0.041, 0.041), (0.156, 0.076, 0.057, 0.049),
        (0.946, 0.942, 0.946, 0.945)]),
    'mim': _grid((0.01, 0.05, 0.1, 0.2), [
        (0.682, 0.043, 0.041, 0.041), (0.838, 0.595, 0.509, 0.467),
        (0.919, 0.701, 0.593, 0.536),
        (0.994, 0.661, 0.012, 0.007), (0.997, 0.986, 0.956, 0.831),
        (0.995, 0.995, 0.994, 0.973),
        (0.196, 0.038, 0.035, 0.034), (0.836, 0.304, 0.211, 0.142),
        (0.902, 0.691, 0.574, 0.568)]),
    'deepfool': _grid((10, 20, 30, 40), [
        (0.159, 0.049, 0.034, 0.031), (0.112, 0.069, 0.065, 0.061),
        (0.583, 0.582, 0.582, 0.582),
        (0.009, 0.008, 0.008, 0.008), (0.100, 0.074, 0.059, 0.049),
        (0.815, 0.815, 0.815, 0.815),
        (0.049, 0.042, 0.041, 0.041), (0.082, 0.064, 0.059, 0.056),
        (0.935, 0.935, 0.935, 0.935)]),
    'bim': _grid((0.01, 0.05, 0.1, 0.2), [
        (0.751, 0.053, 0.042, 0.042), (0.807, 0.424, 0.240, 0.174),
        (0.850, 0.634, 0.390, 0.213),
        (0.994, 0.628, 0.015, 0.008), (0.997, 0.929, 0.490, 0.196),
        (0.995, 0.882, 0.429, 0.196),
        (0.564, 0.038, 0.037, 0.036), (0.815, 0.296, 0.176, 0.142),
        (0.799, 0.233, 0.089, 0.051)]),
    'fgsm': _grid((0.01, 0.05, 0.1, 0.2), [
        (0.743, 0.291, 0.193, 0.139), (0.879, 0.729, 0.666, 0.535),
        (0.923, 0.699, 0.604, 0.451),
        (0.994, 0.949, 0.654, 0.227), (0.997, 0.988, 0.985, 0.774),
        (0.995, 0.995, 0.918, 0.332),
        (0.659, 0.321, 0.225, 0.147), (0.882, 0.509, 0.362, 0.224),
        (0.905, 0.671, 0.389, 0.185)]),
    'pgd': _grid((0.02, 0.04, 0.08, 0.1), [
        (0.301, 0.050, 0.041, 0.041), (0.790, 0.707, 0.668, 0.608),
        (0.923, 0.897, 0.877, 0.839),
        (0.983, 0.809, 0.263, 0.008), (0.992, 0.983, 0.975, 0.896),
        (0.995, 0.995, 0.995, 0.993),
        (0.046, 0.036, 0.033, 0.029), (0.731, 0.542, 0.425, 0.315),
        (0.901, 0.863, 0.829, 0.802)]),
}

# Table 4: clean test accuracy.
TABLE4 = {
    'cifar10': {'softmax_ce': 0.933, 'softmax_mse': 0.931, 'tanh_mse': 0.930},
    'mnist': {'softmax_ce': 0.996, 'softmax_mse': 0.997, 'tanh_mse': 0.996},
    'fashion_mnist': {'softmax_ce': 0.948, 'softmax_mse': 0.948,
                      'tanh_mse': 0.945},
}

# Table 5: success rate of targeted white-box attacks (lower = more robust).
TABLE5 = {
    'lbfgs': _grid((0.01, 0.1, 1.0, 10.0), [
        (1.00, 1.00, 1.00, 1.00), (0.667, 0.864, 0.955, 0.994),
        (0.272, 0.475, 0.554, 0.564),
        (1.00, 1.00, 1.00, 1.00), (0.040, 0.536, 0.92, 0.991),
        (0.045, 0.457, 0.72, 0.776),
        (1.00, 1.00, 1.00, 1.00), (0.571, 0.87, 0.97, 0.992),
        (0.644, 0.808, 0.826, 0.832)]),
    'bim': _grid((0.1, 0.2, 0.3, 0.4), [
        (0.997, 1.00, 1.00, 1.00), (0.461, 0.624, 0.658, 0.664),
        (0.230, 0.337, 0.353, 0.353),
        (0.851, 0.992, 0.997, 0.999), (0.316, 0.539, 0.597, 0.612),
        (0.057, 0.129, 0.169, 0.184),
        (0.957, 1.00, 1.00, 1.00), (0.457, 0.581, 0.600, 0.603),
        (0.807, 0.926, 0.938, 0.940)]),
    'pgd': _grid((0.04, 0.06, 0.08, 0.1), [
        (0.934, 0.998, 1.00, 1.00), (0.266, 0.343, 0.402, 0.441),
        (0.242, 0.345, 0.426, 0.467),
        (0.057, 0.464, 0.828, 0.94), (0.008, 0.042, 0.163, 0.269),
        (0.007, 0.068, 0.154, 0.245),
        (0.999, 1.00, 1.00, 1.00), (0.464, 0.589, 0.648, 0.659),
        (0.626, 0.724, 0.794, 0.834)]),
    'cw_l2': _grid((0.01, 0.1, 1.0, 10.0), [
        (1.00, 1.00, 1.00, 1.00), (0.756, 0.842, 0.861, 0.867),
        (0.368, 0.362, 0.361, 0.346),
        (1.00, 1.00, 1.00, 1.00), (0.176, 0.592, 0.677, 0.669),
        (0.006, 0.006, 0.006, 0.002),
        (1.00, 1.00, 1.00, 1.00), (0.658, 0.812, 0.845, 0.851),
        (0.583, 0.592, 0.576, 0.548)]),
    'mim': _grid((0.1, 0.2, 0.3, 0.4), [
        (1.00, 1.00, 1.00, 1.00), (0.351, 0.433, 0.459, 0.468),
        (0.095, 0.136, 0.137, 0.160),
        (0.908, 0.997, 0.998, 0.998), (0.153, 0.319, 0.347, 0.357),
        (0.023, 0.040, 0.052, 0.050),
        (1.00, 1.00, 1.00, 1.00), (0.394, 0.396, 0.394, 0.382),
        (0.114, 0.140, 0.143, 0.147)]),
    'fgsm': _grid((0.1, 0.2, 0.3, 0.4), [
        (0.445, 0.316, 0.231, 0.182), (0.046, 0.061, 0.071, 0.083),
        (0.028, 0.044, 0.081, 0.082),
        (0.095, 0.131, 0.115, 0.113), (0.014, 0.028, 0.052, 0.067),
        (0.007, 0.031, 0.047, 0.067),
        (0.213, 0.158, 0.122, 0.109), (0.073, 0.085, 0.102, 0.107),
        (0.048, 0.081, 0.088, 0.097)]),
}

# Table 6: accuracy on transfer (black-box) examples crafted on O:SOFTMAX:CE,
# untargeted: CWL2 c = 0.01, DeepFool m = 10, MIM eps = 0.01.
TABLE6_ATTACKS = (('cw_l2', 0.01), ('deepfool', 10), ('mim', 0.01))
TABLE6 = {
    'cifar10': {'softmax_mse': (0.483, 0.451, 0.895),
                'tanh_mse': (0.612, 0.617, 0.926)},
    'mnist': {'softmax_mse': (0.996, 0.984, 0.997),
              'tanh_mse': (0.996, 0.973, 0.995)},
    'fashion_mnist': {'softmax_mse': (0.937, 0.933, 0.839),
                      'tanh_mse': (0.952, 0.946, 0.935)},
}

# Table 7: success rate of targeted CWL2 and the distance CW ("Ours"), c in
# {0.1, 1.0}, on O:SOFTMAX:CE and R:TANH:MSE.
TABLE7 = {
    'cifar10': {'softmax_ce': {'cw_l2': (1.0, 1.0),
                               'cw_l2_distance': (1.0, 1.0)},
                'tanh_mse': {'cw_l2': (0.368, 0.362),
                             'cw_l2_distance': (0.859, 0.868)}},
    'mnist': {'softmax_ce': {'cw_l2': (1.0, 1.0),
                             'cw_l2_distance': (1.0, 1.0)},
              'tanh_mse': {'cw_l2': (0.006, 0.006),
                           'cw_l2_distance': (0.715, 0.772)}},
    'fashion_mnist': {'softmax_ce': {'cw_l2': (1.0, 1.0),
                                     'cw_l2_distance': (1.0, 1.0)},
                      'tanh_mse': {'cw_l2': (0.583, 0.592),
                                   'cw_l2_distance': (0.798, 0.829)}},
}
TABLE7_CONSTS = (0.1, 1.0)

# Figures 1-2: success rates quoted in the captions.
FIGURE1_EPS = {'cifar10': {'softmax_ce': 0.03, 'tanh_mse': 0.35}}
FIGURE2_SUCCESS = {'mnist': {'softmax_ce': 0.908, 'tanh_mse': 0.023}}


def paper_dataset(name: str) -> str | None:
  """The paper's dataset that mlrobust's dataset `name` is compared with."""
  return {'cifar10_jpeg': 'cifar10', 'cifar10': 'cifar10', 'mnist': 'mnist',
          'fashion_mnist': 'fashion_mnist'}.get(name)

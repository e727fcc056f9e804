"""Shared config for every dataset: the three models, sizes and defaults.

The presets are the paper's models (Saito & Roy, Section 4.2):
  softmax_ce   O:SOFTMAX:CE   softmax outputs, one-hot targets, cross-entropy;
  softmax_mse  O:SOFTMAX:MSE  softmax outputs, one-hot targets, MSE;
  tanh_mse     R:TANH:MSE     tanh outputs of d=128, secret codebook, MSE.
The sizes are `paper` (DenseNet-40, growth 12: for a GPU), `cpu` (a small
DenseNet that trains in minutes on two CPU cores) and `smoke` (seconds, for
tests).
"""

from ml_collections import config_dict

from mlrobust import config_lib
from mlrobust import grids
from mlrobust import paper_tables

PRESETS = paper_tables.PRESETS
SIZES = ('paper', 'cpu', 'smoke')


def _adam(c, learning_rate: float, schedule: str) -> None:
  """Adam without weight decay, in place of the paper's SGD (small sizes)."""
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = learning_rate
  c.optimizer.momentum = 0.0
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = schedule


def get_config(dataset: str, arg: str | None, num_classes: int = 10):
  """The config of `dataset` for the words in `arg` (see module docstring)."""
  preset, size = config_lib.parse_arg(arg, presets=PRESETS, sizes=SIZES,
                                      default_preset='tanh_mse',
                                      default_size='paper')
  activation, targets, loss = paper_tables.HEADS[preset]
  c = config_dict.ConfigDict()
  c.preset = preset
  c.size = size
  c.seed = 0

  c.data = config_dict.ConfigDict()
  c.data.name = dataset
  c.data.data_dir = config_dict.placeholder(str)  # None: TFDS's default.
  c.data.manual_dir = config_dict.placeholder(str)
  c.data.download = True  # False: only prepare from local files.
  c.data.num_train = 0  # 0 = the whole split.
  c.data.num_test = 0

  c.model = config_dict.ConfigDict()
  c.model.name = 'densenet'
  c.model.depth = 40
  c.model.growth_rate = 12
  c.model.num_blocks = 3
  c.model.bottleneck = False
  c.model.compression = 1.0
  c.model.dropout_rate = 0.0
  c.model.stem_features = config_dict.placeholder(int)
  c.model.stem_stride = 1

  c.head = config_dict.ConfigDict()
  c.head.activation = activation
  c.head.targets = targets
  # Width of the output; one-hot targets need the number of classes.
  c.head.dim = 128 if targets == 'codebook' else num_classes
  # Secret; None reads $MLROBUST_CODEBOOK_KEY, else a random key is drawn once
  # and only the codebook (in the workdir) is kept. Never logged or saved.
  c.head.codebook_key = config_dict.placeholder(int)
  c.loss = loss

  # Paper scale: the DenseNet paper's SGD recipe (the Saito & Roy paper does
  # not give its training schedule).
  c.optimizer = config_dict.ConfigDict()
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = 'piecewise'  # x0.1 at 50% and 75% of training.
  c.optimizer.warmup_epochs = 0.0

  c.train = config_dict.ConfigDict()
  c.train.batch_size = 64
  c.train.num_epochs = 40
  c.train.augment = 'none'
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 0  # 0: at the end of every epoch only.

  # Devices: one 'data' axis over all local devices (-1), or the first n:
  # batches are split across it, parameters replicated (mlrobust/sharding.py).
  c.mesh = config_dict.ConfigDict()
  c.mesh.shape = (-1,)

  c.eval = config_dict.ConfigDict()
  c.eval.batch_size = 500
  c.eval.num_examples = 1000  # Test images attacked (0 = the whole split).
  # --mode=evaluate (mlrobust/evaluate.py, mlrobust/grids.py): named grid
  # entries (attack, targeted, swept param and values, images, ...), here the
  # paper's Tables 3, 5, 6, 7 and the Figure 1 eps ladder; eval.tables picks
  # the tables that run. eval.grid: a one-line shorthand for your own entries,
  # e.g. 'pgd:eps=0.01,0.03;targeted:cw_l2_distance:initial_const=0.1'.
  table7 = preset in ('softmax_ce', 'tanh_mse')  # The paper's Table 7 models.
  # A codeword head is also evaluated under the cleverhans semantics (how the
  # paper's numbers were made); for one-hot heads the two are the same.
  c.eval.grids = grids.paper_entries(with_table7=table7,
                                     with_cleverhans=targets == 'codebook')
  c.eval.tables = tuple(t for t in grids.PAPER_TABLES
                        if t != 'table7' or table7)
  c.eval.grid = ''
  c.eval.proxy_workdir = ''  # Table 6: a trained softmax_ce run to craft on.
  # Images per cell of an entry whose `images` is None, by attack family
  # (0: the whole test split); figure1: the ladder (None: as linf).
  c.eval.images = config_dict.ConfigDict()
  c.eval.images.linf = 0  # fgsm, bim, mim, pgd, apgd, square
  c.eval.images.deepfool = 0
  c.eval.images.cw = 0  # cw_l2, cw_l2_distance
  c.eval.images.lbfgs = 0
  c.eval.images.figure1 = config_dict.placeholder(int)
  # Iterations per binary-search step, by family. None: the paper's 1000
  # (Table 2); set to fit a CPU budget (recorded in each cell).
  c.eval.max_iterations = config_dict.ConfigDict()
  c.eval.max_iterations.cw = config_dict.placeholder(int)
  c.eval.max_iterations.lbfgs = config_dict.placeholder(int)
  c.eval.save_examples = 8  # Clean/adversarial images kept per cell.
  c.eval.seed = 0  # Random targets and attack keys.

  # --mode=adaptive (mlrobust/adaptive_run.py): the adaptive ensemble at each
  # Linf eps and the masking checklist.
  c.adaptive = config_dict.ConfigDict()
  c.adaptive.eps = (0.01, 0.05, 0.1, 0.2)  # The paper's Linf grid (Table 1).
  c.adaptive.num_examples = 1000  # 0 = the whole test split.
  c.adaptive.members = ('apgd-ce', 'apgd-t', 'pgd-margin', 'square')
  c.adaptive.seed = 0
  # The results folder under the workdir (the report reads 'adaptive'); give
  # another member list its own, e.g. 'adaptive_label_only'.
  c.adaptive.folder = 'adaptive'

  # --mode=attack. Unset (None) parameters take the attack's defaults, which
  # are cleverhans v2.1's as the paper used them (see mlrobust/attacks).
  c.attack = config_dict.ConfigDict()
  c.attack.name = 'pgd'
  c.attack.targeted = False
  c.attack.loss = config_dict.placeholder(str)
  c.attack.eps = config_dict.placeholder(float)
  c.attack.eps_iter = config_dict.placeholder(float)
  c.attack.nb_iter = config_dict.placeholder(int)
  c.attack.decay = config_dict.placeholder(float)
  c.attack.initial_const = config_dict.placeholder(float)
  c.attack.binary_search_steps = config_dict.placeholder(int)
  c.attack.max_iterations = config_dict.placeholder(int)
  c.attack.learning_rate = config_dict.placeholder(float)
  c.attack.confidence = config_dict.placeholder(float)
  c.attack.max_iter = config_dict.placeholder(int)
  c.attack.nb_candidate = config_dict.placeholder(int)
  c.attack.overshoot = config_dict.placeholder(float)
  # 'decoding' (default) or 'cleverhans' (deepfool, cw_l2, cw_l2_distance,
  # lbfgs: how cleverhans v2.1 treats a codeword head; see mlrobust/attacks).
  c.attack.semantics = config_dict.placeholder(str)
  c.attack.n_iter = config_dict.placeholder(int)  # apgd
  c.attack.rho = config_dict.placeholder(float)  # apgd
  # apgd, hop_skip_jump: 'linf' (default), 'l2'.
  c.attack.norm = config_dict.placeholder(str)
  c.attack.space = config_dict.placeholder(str)  # cw_l2_distance
  c.attack.n_queries = config_dict.placeholder(int)  # square, hop_skip_jump
  c.attack.p_init = config_dict.placeholder(float)  # square
  c.attack.batch_size = 128  # Images per compiled attack call.
  c.attack.seed = 0  # Random targets and PGD starts.

  if size == 'cpu':
    # DenseNet-13, growth 8, stride-2 stem: 40-50k parameters.
    c.model.depth = 13
    c.model.growth_rate = 8
    c.model.stem_stride = 2
    _adam(c, 3e-3, 'cosine')
    c.optimizer.warmup_epochs = 0.2
    c.train.batch_size = 128
    c.train.num_epochs = 6
    c.train.log_every_steps = 50
    # A CPU evaluation budget: at least 100 images per cell; CW at the
    # paper's 1000 iterations per binary-search step (100 left CW-distance
    # at 0.01 success where 1000 reach most images), L-BFGS at 100 (the
    # paper: 1000); see REPRODUCTION.md for the measured time per model.
    c.eval.images.update(linf=500, deepfool=100, cw=100, lbfgs=100,
                         figure1=100)
    c.eval.max_iterations.lbfgs = 100
    c.adaptive.num_examples = 300
  elif size == 'smoke':
    c.model.depth = 7  # One composite layer per block.
    c.model.growth_rate = 4
    c.model.stem_features = 4
    c.model.stem_stride = 2
    _adam(c, 1e-3, 'constant')
    c.data.num_train = 256
    c.data.num_test = 128
    c.train.batch_size = 32
    c.train.num_epochs = 2
    c.train.log_every_steps = 4
    c.eval.batch_size = 64
    c.eval.num_examples = 32
    c.eval.images.update(linf=16, deepfool=8, cw=4, lbfgs=4)
    c.eval.max_iterations.update(cw=10, lbfgs=5)
    c.adaptive.num_examples = 8
    c.adaptive.eps = (0.1, 0.3)
    c.adaptive.members = ('apgd-ce', 'pgd-margin')
    c.eval.grids.figure1_pgd.param_values = (0.1, 0.3, 1.0)
  return c

"""Evaluation grids as structured config entries, and the cells they expand to.

An evaluation is a set of named entries in `config.eval.grids` (plain data, as
big_vision configures its evaluators):

  config.eval.grids.table3_pgd = grids.entry(
      'table3', 'pgd', targeted=False, param='eps', param_values=(0.02, 0.04))

Fields of an entry: `table` (the preset it belongs to, e.g. 'table3'),
`attack`, `targeted`, `param` (the swept parameter) and `param_values`,
`images` (test images per cell; None takes `config.eval.images.<family>` of
the attack; 0 = the whole test split), `transfer` (crafted on
`config.eval.proxy_workdir` and only classified by the evaluated model: the
paper's Table 6), `ladder` (run the param_values in order and stop at the
first that reaches 100% success: the paper's Figure 1) and `semantics`
('decoding' or 'cleverhans', for the attacks in CLEVERHANS_ATTACKS; a
non-default semantics is part of the cell id). `config.eval.tables`
selects the tables whose entries run; `paper_entries` gives the paper's
Tables 3, 5, 6, 7 and the Figure 1 ladder. Every field can be overridden from
the command line, e.g. `--config.eval.grids.table3_pgd.images=100`,
`--config.eval.grids.table3_pgd.param_values='(0.1,0.3)'` or
`--config.eval.tables="('table3',)"`.

`config.eval.grid` is a one-line shorthand for entries of table 'grid' that
replaces the selected ones: '[targeted:]attack:param=v1,v2;...', e.g.
'pgd:eps=0.01,0.03;targeted:cw_l2_distance:initial_const=0.1'.

`plan` expands the entries into `Cell`s, one attack run each.
"""

import dataclasses

from ml_collections import config_dict

from mlrobust import attacks
from mlrobust import paper_tables

# Attack families share an image budget (config.eval.images.<family>) and an
# iteration budget (config.eval.max_iterations.<family>).
FAMILIES = {'fgsm': 'linf', 'bim': 'linf', 'mim': 'linf', 'pgd': 'linf',
            'deepfool': 'deepfool', 'cw_l2': 'cw', 'cw_l2_distance': 'cw',
            'lbfgs': 'lbfgs', 'apgd': 'linf', 'square': 'linf'}
# The order in which cells run: fast attacks first.
ORDER = ('fgsm', 'bim', 'mim', 'pgd', 'apgd', 'square', 'deepfool', 'cw_l2',
         'cw_l2_distance', 'lbfgs')
PAPER_TABLES = ('table3', 'table5', 'table6', 'table7', 'figure1')
FIGURE1_EPS = (0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3,
               0.35, 0.4, 0.5)
SHORTHAND_TABLE = 'grid'
# The attacks that take `semantics` (see mlrobust.attacks.core.SEMANTICS).
CLEVERHANS_ATTACKS = ('deepfool', 'cw_l2', 'cw_l2_distance', 'lbfgs')


def entry(table: str, attack: str, *, targeted: bool, param: str,
          param_values, images: int | None = None, transfer: bool = False,
          ladder: bool = False,
          semantics: str = 'decoding') -> config_dict.ConfigDict:
  """One grid entry (see the module docstring)."""
  e = config_dict.ConfigDict()
  e.table = table
  e.attack = attack
  e.targeted = targeted
  e.param = param
  e.param_values = tuple(param_values)
  e.images = config_dict.placeholder(int)
  e.images = images
  e.transfer = transfer
  e.ladder = ladder
  e.semantics = semantics
  return e


def paper_entries(*, with_table7: bool = True, with_cleverhans: bool = False,
                  figure1_eps=FIGURE1_EPS) -> config_dict.ConfigDict:
  """The paper's grids as entries: Tables 3, 5, 6, 7 and the Figure 1 ladder.

  Swept values are the paper's Table 1 (its MNIST values, the same for every
  dataset); constant parameters are the attacks' defaults (its Table 2).
  Table 7 has the softmax_ce and tanh_mse models only (`with_table7`).
  `with_cleverhans` adds, for the attacks whose cleverhans semantics differs
  on a codeword head (DeepFool, CW, CW-distance, L-BFGS), the same grids
  under `semantics='cleverhans'` (entries named `<entry>_cleverhans`).
  """
  grids = config_dict.ConfigDict()
  for table, source, targeted in (('table3', paper_tables.TABLE3, False),
                                  ('table5', paper_tables.TABLE5, True)):
    for attack, grid in source.items():
      grids[f'{table}_{attack}'] = entry(
          table, attack, targeted=targeted, param=paper_tables.SWEPT[attack],
          param_values=tuple(grid['mnist']['softmax_ce']))
  for attack, value in paper_tables.TABLE6_ATTACKS:
    grids[f'table6_{attack}'] = entry(
        'table6', attack, targeted=False, param=paper_tables.SWEPT[attack],
        param_values=(value,), transfer=True)
  if with_table7:
    for attack in ('cw_l2', 'cw_l2_distance'):
      grids[f'table7_{attack}'] = entry(
          'table7', attack, targeted=True, param='initial_const',
          param_values=paper_tables.TABLE7_CONSTS)
  grids.figure1_pgd = entry('figure1', 'pgd', targeted=True, param='eps',
                            param_values=figure1_eps, ladder=True)
  if with_cleverhans:
    for name in list(grids):
      e = grids[name]
      if e.attack in CLEVERHANS_ATTACKS and not e.transfer:
        twin = e.copy_and_resolve_references()
        twin.semantics = 'cleverhans'
        grids[f'{name}_cleverhans'] = twin
  return grids


def parse_shorthand(spec: str) -> dict:
  """'[targeted:]attack:param=v1,v2;...' -> {name: entry} of table 'grid'.

  Raises:
    ValueError: a malformed entry, an unknown attack or parameter, values that
      are not numbers, or an attack run in a direction it does not support.
  """
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(';'))):
    words = part.split(':')
    targeted = words[0] == 'targeted'
    if words[0] in ('targeted', 'untargeted'):
      words = words[1:]
    if len(words) != 2 or '=' not in words[1]:
      raise ValueError(f'bad grid entry {part!r}; expected '
                       "'[targeted:]attack:param=v1,v2,...'")
    attack, assignment = words
    param, values = assignment.split('=', 1)
    try:
      vals = tuple(int(v) if param in attacks.INT_PARAMS else float(v)
                   for v in values.split(','))
    except ValueError:
      raise ValueError(f'grid entry {part!r}: values must be numbers') from None
    e = entry(SHORTHAND_TABLE, attack, targeted=targeted, param=param,
              param_values=vals)
    try:
      check_entry(e)
    except ValueError as err:
      raise ValueError(f'grid entry {part!r}: {err}') from None
    out[f'grid{len(out)}_{attack}'] = e
  if not out:
    raise ValueError(f'empty grid {spec!r}')
  return out


def check_entry(e) -> None:
  """Raises ValueError saying what is wrong with one entry."""
  attacks.check_direction(e.attack, e.targeted)
  accepted = attacks.accepted_params(e.attack)
  if e.param not in accepted:
    raise ValueError(f'{e.attack} has no parameter {e.param!r}; it takes '
                     f'{accepted}')
  if not e.param_values:
    raise ValueError('param_values is empty')
  for v in e.param_values:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      raise ValueError(f'param_values must be numbers, got {v!r}')
    attacks.check_values(**{e.param: v})
  if e.images is not None and e.images < 0:
    raise ValueError(f'images must be >= 0 (0 = the whole test split), got '
                     f'{e.images}')
  if e.ladder and e.transfer:
    raise ValueError('an entry is a ladder or a transfer, not both')
  attacks.check_values(semantics=e.semantics)
  if e.semantics != 'decoding' and e.attack not in CLEVERHANS_ATTACKS:
    raise ValueError(f"{e.attack} has one semantics; 'cleverhans' is for "
                     f'{list(CLEVERHANS_ATTACKS)}')


def selected(eval_config) -> list[tuple[str, config_dict.ConfigDict]]:
  """[(name, entry)] that an evaluation runs: the shorthand, else the tables."""
  if eval_config.grid:
    return list(parse_shorthand(eval_config.grid).items())
  return [(name, e) for name, e in eval_config.grids.items()
          if e.table in eval_config.tables]


def check(eval_config) -> None:
  """Validates `config.eval` for --mode=evaluate; raises ValueError."""
  e = eval_config
  for family, n in e.images.items():
    if n is not None and n < 0:
      raise ValueError(f'eval.images.{family} must be >= 0 (0 = the whole '
                       f'test split), got {n}')
  for family, n in e.max_iterations.items():
    if n is not None and n < 1:
      raise ValueError(f'eval.max_iterations.{family} must be >= 1, got {n}')
  if e.save_examples < 0:
    raise ValueError('eval.save_examples must be >= 0')
  if not e.grid:
    known = sorted({g.table for g in e.grids.values()})
    unknown = sorted(set(e.tables) - set(known))
    if unknown or not e.tables:
      raise ValueError(f'eval.tables {tuple(e.tables)}: no entry of '
                       f'eval.grids belongs to {unknown}; choose from '
                       f'{known}')
  for name, g in selected(e):
    try:
      check_entry(g)
    except ValueError as err:
      raise ValueError(f'eval.grids.{name}: {err}') from None


@dataclasses.dataclass(frozen=True)
class Cell:
  """One attack run: an attack, a swept value and the images it uses."""
  attack: str
  targeted: bool
  param: str            # The swept parameter.
  value: float | int
  num_examples: int
  fixed: tuple = ()     # ((name, value), ...) parameters not the paper's.
  transfer_from: str | None = None  # Proxy run name (Table 6), else None.

  @property
  def params(self) -> dict:
    return {self.param: self.value, **dict(self.fixed)}

  @property
  def id(self) -> str:
    parts = []
    if self.transfer_from:
      parts.append(f'transfer-from-{self.transfer_from}')
    parts += [self.attack, 'targeted' if self.targeted else 'untargeted',
              f'{self.param}={self.value:g}']
    parts += [f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}'
              for k, v in self.fixed]
    parts.append(f'n={self.num_examples}')
    return '_'.join(parts)


def num_images(eval_config, e, num_test: int) -> int:
  """Test images per cell of entry `e` (capped at `num_test`)."""
  n = e.images
  if n is None and e.ladder and eval_config.images.figure1 is not None:
    n = eval_config.images.figure1
    linf = eval_config.images.linf
    if linf:  # The ladder never uses more images than the Linf cells.
      n = min(n, linf)
  if n is None:
    n = eval_config.images[FAMILIES[e.attack]]
  return num_test if n == 0 else int(min(n, num_test))


def fixed_params(eval_config, attack: str) -> tuple:
  """Parameters that differ from the paper's for `attack` (CPU budgets)."""
  family = FAMILIES[attack]
  n = eval_config.max_iterations.get(family)
  return (('max_iterations', int(n)),) if n else ()


def plan(eval_config, num_test: int, *, proxy_name: str | None = None):
  """(cells, ladders): the evaluation's cells, fast attacks first, and the
  ladders as lists of cells to run in order until one reaches 100% success.

  Transfer entries need `proxy_name` (the proxy run's name); without it they
  are left out. Equal cells of several entries run once.
  """
  cells, ladders = [], []
  for _, e in selected(eval_config):
    if e.transfer and proxy_name is None:
      continue
    n = num_images(eval_config, e, num_test)
    fixed = () if e.ladder else fixed_params(eval_config, e.attack)
    if e.semantics != 'decoding':  # In the cell id; decoding ids unchanged.
      fixed += (('semantics', e.semantics),)
    row = [Cell(e.attack, e.targeted, e.param, v, n, fixed,
                proxy_name if e.transfer else None) for v in e.param_values]
    if e.ladder:
      ladders.append(row)
    else:
      cells += [c for c in row if c not in cells]
  cells.sort(key=lambda c: (c.transfer_from is not None,
                            ORDER.index(c.attack)))
  return cells, ladders


def max_images(eval_config) -> int:
  """The most test images any selected entry needs (0 = the whole split)."""
  ns = [num_images(eval_config, e, 10**9) for _, e in selected(eval_config)]
  return 0 if not ns or 10**9 in ns else max(ns)

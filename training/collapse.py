"""The collapse guard: an evaluation that shows one output for every sample, and the warning naming why.

R-Drop's KL is smallest when both passes give the same distribution whatever the dropout mask; with
dropout on the logits (the Cat-12 head) that is all logits at zero: one output for every image, training
CE at ln C, the KL near 0, and either one constant predicted class or an argmax left to tiny differences.
A KL weight too large against the cross entropy, or a step too large (R-Drop sums two cross entropies),
pushes the model there. Training CE near ln C alone is no trigger: a healthy model trained from random
weights sits there during its first epochs too.
"""
import math


class TrainingCollapsed(ValueError):
  """Evaluations collapsed config.eval.stop_after_collapses times in a row (reported as a one-line error)."""


class CollapseGuard:
  """Collapsed evaluations in a row; the `limit`-th (0: no limit) raises TrainingCollapsed. It keeps the newest
  training row too, which the warning quotes (an evaluation may come first after a resume)."""

  def __init__(self, limit):
    self.limit, self.in_a_row, self.recent_train = limit, 0, {}

  def count(self, collapse, update):
    self.in_a_row = self.in_a_row + 1 if collapse else 0
    if self.limit and self.in_a_row == self.limit:
      raise TrainingCollapsed(f'stopped after {self.limit} collapsed evaluation(s) in a row, the last at update '
                              f'{update} (config.eval.stop_after_collapses={self.limit}); checkpoint saved. The '
                              f'warning above names the likely cause')

  def state_dict(self):  # the keys checkpoints have held since before this object
    return {'collapses_in_a_row': self.in_a_row, 'last_train_row': self.recent_train}

  def load_state_dict(self, state):
    self.in_a_row, self.recent_train = state['collapses_in_a_row'], state['last_train_row']


def collapsed(metrics, eval_config):
  """Whether an evaluation shows a collapsed model: (nearly) one predicted class, or one output for all.
  A threshold of 0 turns its check off."""
  return (0 < eval_config.collapse_majority <= metrics['majority_fraction']
          or metrics['prediction_information'] < eval_config.collapse_information)


def collapse_warning(update, metrics, config, num_classes, recent_train):
  """The log line for a collapsed evaluation (see `collapsed`), naming the likely cause."""
  rc, ec = config.rdrop, config.eval
  signs = []
  if metrics['majority_fraction'] >= ec.collapse_majority:
    signs.append(f'{metrics["majority_fraction"]:.1%} of the {metrics["count"]} {ec.split} samples are predicted as '
                 f'class {metrics["majority_class"]} (eval.collapse_majority={ec.collapse_majority:g})')
  if metrics['prediction_information'] < ec.collapse_information:
    signs.append(f'the predictions carry {metrics["prediction_information"]:.2g} x ln {num_classes} of information '
                 f'about the image, nearly one output for all (eval.collapse_information={ec.collapse_information:g})')
  text = f'WARNING: collapse at update {update}: {"; ".join(signs)}'
  if recent_train:
    text += (f'; training CE {recent_train["ce"]:.4f} (ln {num_classes} = {math.log(num_classes):.4f})'
             + (f', KL {recent_train["kl"]:.3g}' if 'kl' in recent_train else ''))
  if rc.alpha > 0:
    remedies = 'lower rdrop.alpha or train.lr' + (', or average the two cross entropies (rdrop.ce_of_passes=mean)'
                                                  if rc.ce_of_passes == 'sum' else '')
    return (f'{text}. If it persists, the likely cause is the R-Drop KL term (rdrop.alpha={rc.alpha:g}, reduction '
            f'{rc.reduction}) outweighing the cross entropy, which drives both passes to one output for every '
            f'image: {remedies}')
  return (f'{text}. If it persists, the likely cause is a step too large for this model: lower train.lr '
          f'(a model from random weights can start this way and recover)')

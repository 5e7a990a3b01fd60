"""What a config field's value may be: (test, what is allowed), as the FIELD_RULES that model and dataset
modules declare for their own fields, and training/config_check.py for the trainer's, are written."""

INT64_LIMIT = 2**63  # what Paddle's int64 holds


def numbers(v):
  """True for a non-empty tuple or list of ints and floats (a bad override can leave strings in one)."""
  return (isinstance(v, (tuple, list)) and len(v) > 0
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v))


POSITIVE = (lambda v: v > 0, 'must be > 0')
NON_NEGATIVE = (lambda v: v >= 0, 'must be >= 0')
RATE = (lambda v: 0 <= v < 1, 'must be in [0, 1)')
FRACTION = (lambda v: 0 < v <= 1, 'must be in (0, 1]')
ALL_POSITIVE = (lambda v: numbers(v) and all(x > 0 for x in v), 'must be positive numbers')


def one_of(values):
  return (lambda v: v in values, f'choose one of {", ".join(map(str, values))}')

"""A tqdm progress bar over epochs that stays out of the way.

It appears only on an interactive terminal and only once a run has lasted
``delay`` seconds, so short runs, tests and logs stay clean; ``quiet=True``
turns it off entirely.
"""

from __future__ import annotations

from tqdm.auto import tqdm


def epoch_bar(total: int, initial: int = 0, *, quiet: bool = False, desc: str = "train",
              delay: float = 2.0) -> tqdm:
    """A progress bar counting epochs from ``initial`` to ``total``.

    Args:
      total: the last epoch.
      initial: epochs already done (a resumed run).
      quiet: never show it.
      desc: the label.
      delay: seconds before it first appears.
    """
    return tqdm(total=total, initial=initial, desc=desc, unit="epoch", delay=delay,
                disable=True if quiet else None, leave=False, dynamic_ncols=True)

"""The README's Python examples run as written and give what their comments say."""

import re
from pathlib import Path

import jax
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2
    scope: dict = {}
    exec(compile("\n".join(blocks), str(README), "exec"), scope)   # noqa: S102
    grads, eig, rates, phi = (scope[k] for k in ("grads", "eig", "rates", "phi"))
    assert jax.tree.structure(grads) == jax.tree.structure(scope["params"])
    assert eig.values.shape == (5,) and bool(np.all(np.diff(np.asarray(eig.values)) <= 0))
    assert bool(np.all(eig.converged))
    np.testing.assert_allclose(rates.stable_limit, 2 / eig.values[0], rtol=1e-6)
    assert phi.values.shape == (100, 64)
    # efficiency: each row's values add up to f(x) - f(baseline)
    np.testing.assert_allclose(np.asarray(phi.values).sum(1),
                               np.asarray(phi.prediction - phi.base_value), atol=1e-4)

import jax
import numpy as np

from sim.policies import tabular


def test_starts_at_the_reference_and_every_logit_is_a_parameter():
    ref = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (3, 4, 5)))
    pol = tabular.make(ref)
    params = pol.init()
    np.testing.assert_array_equal(pol.marginals(params), ref)
    # a gradient on one (prompt, position) slot touches no other slot
    g = jax.grad(lambda p: pol.marginals(p)[1, 2, 3])(params)
    assert np.count_nonzero(np.asarray(g)) == 1

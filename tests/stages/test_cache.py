"""sim/stages/cache.py: items loaded when stored, fitted (once, together) when missing or unusable,
saved, and stacked back onto the runs by index."""
import numpy as np

from sim.stages import cache

TEMPLATE = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def _fit(log):
    """A fake fit: item k's params are full of k, its loss curve [k, k+1], measured a = 10 k."""
    def fit(missing):
        log.append(list(missing))
        return [({"w": np.full((2, 3), k, np.float32), "b": np.full(3, k, np.float32)},
                 np.array([k, k + 1.0]), {"a": 10.0 * k}) for k in missing]
    return fit


def test_fits_what_is_missing_then_loads_it_and_stacks_it_onto_the_runs(tmp_path):
    paths = [tmp_path / f"{k}.npz" for k in range(3)]
    index_R = np.array([2, 0, 2, 1])
    log = []
    first = cache.run(paths, index_R, TEMPLATE, ("a",), _fit(log))
    assert log == [[0, 1, 2]] and [i.cached for i in first.items] == [False] * 3
    assert all(p.is_file() for p in paths)
    np.testing.assert_array_equal(first.params_R["w"][:, 0, 0], [2, 0, 2, 1])  # each run gets its item
    assert first.params_R["b"].shape == (4, 3)
    np.testing.assert_array_equal(first.loss_KxS, [[0, 1], [1, 2], [2, 3]])

    paths[1].write_bytes(b"not a zip file")  # damaged: fitted again
    np.savez(paths[2], leaf_0=np.zeros(3), leaf_1=np.zeros((3, 2)))  # w stored with another shape: fitted again
    again = cache.run(paths, index_R, TEMPLATE, ("a",), _fit(log))
    assert log[-1] == [1, 2] and [i.cached for i in again.items] == [True, False, False]
    assert [i.measured for i in again.items] == [{"a": 0.0}, {"a": 10.0}, {"a": 20.0}]
    for a, b in zip(first.params_R.values(), again.params_R.values()):
        np.testing.assert_array_equal(a, b)

    assert [i.cached for i in cache.run(paths, index_R, TEMPLATE, ("a",), _fit(log)).items] == [True] * 3
    assert len(log) == 2  # nothing fitted the third time


def test_the_key_changes_with_the_fields_and_the_sources():
    import sim.stages.cache as a
    import sim.stages.proxy as b
    base = cache.key({"x": 1, "y": [2, 3]}, [a])
    assert len(base) == 24 and base == cache.key({"y": [2, 3], "x": 1}, [a])  # field order does not matter
    assert len({base, cache.key({"x": 2, "y": [2, 3]}, [a]), cache.key({"x": 1, "y": [2, 3]}, [a, b])}) == 3

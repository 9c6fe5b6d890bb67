"""experiments/report.py: the statistics and verdicts the report's sentences rest on."""
import numpy as np

from experiments import report
from sim import task as T


def test_tilt_share_is_phis_part_of_the_bad_tokens():
    # blog task at phi_prime's positions: 12 bad tokens (16 - 4), of which phi's 4 good ones
    task = T.Task(16, 8, 16, T.RewardSpec((0, 1, 2, 3), (0, 1, 2, 3)), T.RewardSpec((4, 5, 6, 7), (4, 5, 6, 7)))
    assert report.tilt_spill_share(task) == 4 / 12


def test_change_is_paired_by_row_and_sign_reads_the_interval():
    x_TxN = np.array([[0.5, 0.5, 0.5], [0.4, 0.3, 0.35]])
    mean, lo, hi = report.change(x_TxN)
    assert np.isclose(mean, -0.15) and lo < mean < hi < 0
    assert report.sign((-0.1, -0.2, -0.01)) == "falls"
    assert report.sign((0.1, 0.01, 0.2)) == "rises"
    assert report.sign((0.0, -0.1, 0.1)) == "no clear change"


def test_table_is_markdown_with_one_row_per_entry():
    text = report.table(["a", "b"], [[1, 2], [3, 4]])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | 2 |", "| 3 | 4 |"]

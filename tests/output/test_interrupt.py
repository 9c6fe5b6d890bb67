import os
import signal

import pytest

from sim.output import interrupt


def test_a_sigint_inside_deferred_is_raised_when_the_block_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.deferred():
            signal.raise_signal(signal.SIGINT)  # synchronous (os.kill's delivery can lag under load)
            for _ in range(1000):  # the handler has run by now (Python checks between bytecodes)
                pass
            done.append("the whole block")
    assert done == ["the whole block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_the_interrupted_message_names_the_step_to_resume_from():
    assert interrupt.message(interrupt.Interrupted(15)) == ("sim: interrupted at step 15; rerun the same command "
                                                            "to resume")
    assert isinstance(interrupt.Interrupted(0), KeyboardInterrupt)  # Hydra passes it through
    assert interrupt.message(KeyboardInterrupt()) == "sim: interrupted; rerun the same command to resume"

"""The RL loop, pure: advantage estimators, KL and losses (`algos`), one update of one run
(`step`), the compiled loop over steps and vmapped runs (`train`), runs on devices (`layout`),
sweep points x seeds as a batch of runs (`sweep`) and expectations of non-factorised policies
(`estimates`)."""

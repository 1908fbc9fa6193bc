"""The SVMax paper's learning-rate schedule: constant for K/2 iterations, then a polynomial
decay to 1e-7 at iteration K (``table1.py``, ``all_layers.py``, ``proxy_anchor.py``)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="examples")
class ConstantThenPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The paper's schedule: ``lr`` for ``hold_fraction * K`` steps, then polynomial decay
    (``power``) to ``end_learning_rate`` at step ``K``, constant afterwards."""

    def __init__(self, initial_learning_rate, total_steps, end_learning_rate=1e-7, power=1.0,
                 hold_fraction=0.5):
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_steps = int(total_steps)
        self.end_learning_rate = float(end_learning_rate)
        self.power = float(power)
        self.hold_fraction = float(hold_fraction)

    def __call__(self, step):
        hold = float(int(self.total_steps * self.hold_fraction))
        decay_steps = max(float(self.total_steps) - hold, 1.0)
        t = ops.clip((ops.cast(step, "float32") - hold) / decay_steps, 0.0, 1.0)
        span = self.initial_learning_rate - self.end_learning_rate
        return span * ops.power(1.0 - t, self.power) + self.end_learning_rate

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "total_steps": self.total_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "hold_fraction": self.hold_fraction,
        }

"""Value detection on Touché23-ValueEval (system 2): data, official measure, fine-tuning, prompt tuning,
baselines, comparison, prediction. Heavy modules (torch, transformers) load only when used.

>>> from valuelens.detect.data import load_split            # doctest: +SKIP
>>> from valuelens.detect.finetune import ValueDetector      # doctest: +SKIP
>>> det = ValueDetector.from_pretrained("~/.cache/valuelens/detectors/minilm-v1")  # doctest: +SKIP
"""

from .data import Argument, ValueEvalSplit, load_split
from .measure import Scores, evaluate

__all__ = ["Argument", "Scores", "ValueEvalSplit", "evaluate", "load_split"]

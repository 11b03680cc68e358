"""flops_fit.vision where scikit-learn cannot be imported (tests/test_vision.py): the module
imports and DigitsImages is built; calling it raises an ImportError that names the pip
command.

Usage: python vision_without_sklearn.py
Prints: nothing; exits 0 when all of that holds, non-zero (an AssertionError, or
"no ImportError") otherwise.
"""

import sys


def main() -> None:
    sys.modules["sklearn"] = None  # `import sklearn` now raises ImportError, as where it is not installed
    from flops_fit import vision

    f = vision.DigitsImages()
    assert f.num_classes == 10
    try:
        f()
    except ImportError as e:
        assert "pip install scikit-learn" in str(e)
    else:
        raise SystemExit("no ImportError")


if __name__ == "__main__":
    main()

"""How a multi-branch network names its heads: `main`, then `branch_1`, `branch_2`, ... by depth.

Each head `h` is the network output `h_logits` (with `h_features`); this module needs no TensorFlow,
so the scripts can read a saved model's heads from its config before TensorFlow starts.

Example:
>>> branch_names_of({"branch_2_logits": 0, "main_logits": 0, "branch_1_logits": 0, "gate": 0})
['main', 'branch_1', 'branch_2']
"""

MAIN = "main"


def branch_names_of(outputs):
    """`["main", "branch_1", ...]` of a dict (or the names) of network outputs, main first."""
    names = sorted(
        {key[: -len("_logits")] for key in outputs if key.endswith("_logits")} - {MAIN},
        key=lambda n: int(n.split("_")[-1]),
    )
    return [MAIN] + names

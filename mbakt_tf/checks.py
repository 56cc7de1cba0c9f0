"""Named pass/fail checks that a tool records in its manifest or report.

Example:
>>> checks = Checks()
>>> checks.add("int8_builtin_ops_only", True, "ops ['CONV_2D', 'SOFTMAX']")
>>> checks.add("int8_accuracy_drop", False, "1.20 points <= 1.00")
>>> checks.ok, [c["name"] for c in checks.failed]
(False, ['int8_accuracy_drop'])
>>> print(checks.summary())
Checks: 1/2 passed
  FAILED int8_accuracy_drop: 1.20 points <= 1.00
"""


class Checks:
    """An ordered list of `{"name", "passed", "detail"}` dicts (JSON as they are)."""

    def __init__(self, items=()):
        self.items = [dict(item) for item in items]

    def add(self, name, passed, detail):
        self.items.append({"name": name, "passed": bool(passed), "detail": detail})

    @property
    def ok(self):
        return all(c["passed"] for c in self.items)

    @property
    def failed(self):
        return [c for c in self.items if not c["passed"]]

    def summary(self):
        """`Checks: k/n passed`, then one `FAILED name: detail` line per failure."""
        failed = self.failed
        return f"Checks: {len(self.items) - len(failed)}/{len(self.items)} passed" + "".join(
            f"\n  FAILED {c['name']}: {c['detail']}" for c in failed)

    def failure_message(self):
        """`name: detail; ...` of the failed checks, for an exception."""
        return "; ".join(f"{c['name']}: {c['detail']}" for c in self.failed)

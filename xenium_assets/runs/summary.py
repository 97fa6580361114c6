"""What a run started from the command line wrote and how its checks went, a line each."""

from __future__ import annotations

QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def summarise(result, label: str) -> list[str]:
    """What a run wrote and its checks, a line each. A failed asset raises RuntimeError; a failed check (e.g. a
    model no better than chance) is reported, not raised."""
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    checks = result.get_asset_check_evaluations()
    check_steps = {f"{c.asset_key.to_python_identifier()}_{c.check_name}" for c in checks}
    broken = [e for e in failures if e.step_key not in check_steps]
    if broken:
        raise RuntimeError(f"{label}: {broken[0].step_key} failed: {broken[0].step_failure_data.error.message}")
    lines, seen = [], set()
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        name = mat.asset_key.to_user_string()
        if name not in seen:
            seen.add(name)
            path = mat.metadata["path"].value if "path" in mat.metadata else ""
            lines.append(f"{label} {name}: {path}")
    for check in checks:
        lines.append(f"{label} check {check.check_name}: {'passed' if check.passed else 'FAILED'}")
    return lines
